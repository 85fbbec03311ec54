// The couchgate console: plain JavaScript, no build step, couchgate's own API only.
// Logs in with POST /_session (CouchDB's session cookie), then every call carries it.
// Data is always put into the page as text (never as HTML).
'use strict';

const DB = document.querySelector('meta[name="couchgate-db"]').content;
const PAGES = ['conflicts', 'audit', 'import', 'users'];
const OUTCOMES = ['written', 'forbidden', 'conflict', 'invalid', 'success', 'failure', 'denied', 'error', 'unknown'];

// -- small helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(selector, root) { return (root || document).querySelector(selector); }

let uid = 0;
function field(label, input) {
  const id = input.id || `f${++uid}`;
  input.id = id;
  return el('div', {class: 'field'}, el('label', {for: id}, label), input);
}

function select(name, options, value) {
  return el('select', {name}, options.map(([v, text]) => el('option', {value: v, selected: v === value}, text)));
}

function announce(message, isError) {
  const status = $('#status');
  status.textContent = message;
  status.classList.toggle('error', Boolean(isError));
}

function json(value) { return JSON.stringify(value, null, 2); }

function table(caption, headers, rows) {
  return el('div', {class: 'scroll', tabindex: 0, role: 'region', 'aria-label': caption},
    el('table', {},
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', {scope: 'col'}, h)))),
      el('tbody', {}, rows.length ? rows.map((cells) => el('tr', {}, cells.map((c) => el('td', {}, c))))
        : el('tr', {}, el('td', {colspan: headers.length}, 'Nothing to show.')))));
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.reason) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, {query, body} = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
  }
  const headers = {Accept: 'application/json'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(url, {
    method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = {reason: text}; }
  if (!resp.ok) {
    if (resp.status === 401) showLogin('Your session has ended: log in again.');
    throw new ApiError(resp.status, parsed);
  }
  return parsed;
}

function dbPath(db) { return '/' + encodeURIComponent(db); }
function docPath(id) { return id.split('/').map(encodeURIComponent).join('/'); }

async function attempt(action) {
  try {
    return await action();
  } catch (err) {
    announce(err.message, true);
    return undefined;
  }
}

// -- session -------------------------------------------------------------------------------

async function checkSession() {
  try {
    const session = await api('GET', '/_session');
    const ctx = session.userCtx || {};
    if ((ctx.roles || []).includes('_admin')) return startApp(ctx.name || 'admin');
  } catch (err) { /* not logged in */ }
  showLogin();
}

// Who is logged in (null: nobody) decides what is shown: the login form, or the pages.
function signedIn(name) {
  const inside = name !== null;
  $('#login').hidden = inside;
  $('#nav').hidden = !inside;
  $('#who').hidden = !inside;
  if (!inside) $('#page').hidden = true;
  $('#who-name').textContent = name || '';
}

function showLogin(message) {
  signedIn(null);
  $('#login-error').textContent = message || '';
  $('#login-name').focus();
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  const name = form.elements.name.value;
  const password = form.elements.password.value;
  $('#login-error').textContent = '';
  try {
    const answer = await api('POST', '/_session', {body: {name, password}});
    if (!(answer.roles || []).includes('_admin')) {
      await api('DELETE', '/_session').catch(() => null);
      $('#login-error').textContent = 'This console is for server admins.';
      return;
    }
    form.elements.password.value = '';
    startApp(answer.name || name);
  } catch (err) {
    $('#login-error').textContent = err.status === 401 ? 'Name or password is incorrect.' : err.message;
  }
}

async function logout() {
  await api('DELETE', '/_session').catch(() => null);
  announce('Logged out.');
  showLogin();
}

function startApp(name) {
  signedIn(name);
  route();
}

function route() {
  if ($('#nav').hidden) return;
  const page = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const name = PAGES.includes(page) ? page : 'conflicts';
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const section = $('#page');
  section.hidden = false;
  section.replaceChildren();
  announce('');
  ({conflicts: conflictsPage, audit: auditPage, import: importPage, users: usersPage})[name](section);
  const heading = $('h1', section);
  if (heading) { heading.tabIndex = -1; heading.focus(); }
}

// -- conflicts -----------------------------------------------------------------------------

function conflictsPage(root) {
  const dbInput = el('input', {name: 'db', value: DB, required: true});
  const list = el('div', {id: 'conflict-list'});
  const detail = el('div', {id: 'conflict-detail'});
  let next = null;
  let shown = [];

  async function load(more) {
    const db = dbInput.value.trim();
    const page = await attempt(() => api('GET', `${dbPath(db)}/_couchgate/conflicts`, {query: {limit: 50, next: more ? next : null}}));
    if (!page) return;
    shown = more ? shown.concat(page.conflicts) : page.conflicts;
    next = page.next;
    list.replaceChildren(
      table('Conflicted docs', ['Doc', 'Type', 'Kind', 'Conflicting leaves'], shown.map((c) => [
        el('button', {type: 'button', class: 'link', onclick: () => show(db, c.id)}, c.id),
        c.type || '', c.classification, String(c.conflicts.length + c.deleted.length + 1),
      ])),
      next ? el('button', {type: 'button', onclick: () => load(true)}, 'More conflicts') : '');
    announce(`${shown.length} conflicted docs${next ? ' (more available)' : ''}.`);
  }

  async function show(db, id) {
    const found = await attempt(() => api('GET', `${dbPath(db)}/_couchgate/conflicts/${docPath(id)}`));
    if (!found) return;
    const revs = found.leaves.map((leaf) => leaf._rev);
    const preview = el('div', {class: 'preview', 'aria-live': 'polite'});
    const act = (label, run) => el('button', {type: 'button', onclick: run}, label);

    function confirmStep(title, dry, real) {
      return async () => {
        const plan = await attempt(dry);
        if (!plan) return;
        preview.replaceChildren(
          el('h3', {}, title), el('pre', {}, json(plan)),
          el('div', {class: 'actions'},
            act('Confirm', async () => {
              const done = await attempt(real);
              if (!done) return;
              preview.replaceChildren(el('p', {class: 'ok'}, `Done: ${id}`), el('pre', {}, json(done)));
              announce(`${title}: done.`);
              load(false);
            }),
            act('Cancel', () => { preview.replaceChildren(); announce('Cancelled.'); })));
        $('h3', preview).tabIndex = -1;
        $('h3', preview).focus();
      };
    }

    const base = `${dbPath(db)}/_couchgate/conflicts/${docPath(id)}`;
    const resolve = (body, dryRun) => api('POST', `${base}/resolve`, {query: {dry_run: dryRun}, body});
    const leaves = found.leaves.map((leaf) => {
      const changes = (found.diffs[leaf._rev] || {changes: []}).changes;
      const pick = {strategy: 'pick', rev: leaf._rev, leaves: revs};
      return el('article', {class: 'leaf'},
        el('h3', {}, `${leaf._rev}${leaf._rev === found.winner ? ' (winner)' : ''}${leaf._deleted ? ' (deleted)' : ''}`),
        table(`Changes of ${leaf._rev} against the ${(found.diffs[leaf._rev] || {}).against || 'winner'}`,
          ['Field', 'Change', 'Before', 'After'],
          changes.map((c) => [c.path.join('.'), c.op, c.before === undefined ? '' : JSON.stringify(c.before),
            c.after === undefined ? '' : JSON.stringify(c.after)])),
        act(`Keep ${leaf._rev}`, confirmStep(`Keep ${leaf._rev}`, () => resolve(pick, 'true'), () => resolve(pick, 'false'))));
    });
    const auto = {strategy: 'auto', leaves: revs};
    const split = (dryRun) => api('POST', `${base}/split`, {query: {dry_run: dryRun}, body: {}});
    detail.replaceChildren(
      el('h2', {}, `${found.id}: ${found.classification}`),
      el('p', {}, `Winner ${found.winner}; common ancestor ${found.ancestor.rev || 'none'}${found.ancestor.rev && !found.ancestor.available ? ' (compacted)' : ''}.`),
      el('div', {class: 'actions'},
        found.classification === 'uuid_collision'
          ? act('Preview split', confirmStep('Split into separate docs', () => split('true'), () => split('false')))
          : act('Preview automatic merge', confirmStep('Automatic merge', () => resolve(auto, 'true'), () => resolve(auto, 'false')))),
      preview, ...leaves);
    $('h2', detail).tabIndex = -1;
    $('h2', detail).focus();
  }

  const form = el('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); detail.replaceChildren(); load(false); }},
    field('Database', dbInput), el('button', {type: 'submit'}, 'Show conflicts'));
  root.append(el('h1', {}, 'Conflicts'), form, list, detail);
  load(false);
}

// -- audit log -----------------------------------------------------------------------------

function auditPage(root) {
  const inputs = {
    doc: el('input', {name: 'doc'}),
    user: el('input', {name: 'user'}),
    action: el('input', {name: 'action', placeholder: 'create, update, import, login...'}),
    outcome: select('outcome', [['', 'any'], ...OUTCOMES.map((o) => [o, o])], ''),
    since: el('input', {name: 'since', type: 'datetime-local'}),
    until: el('input', {name: 'until', type: 'datetime-local'}),
  };
  const results = el('div', {id: 'audit-results'});
  const history = el('div', {id: 'audit-history'});
  const verifyOut = el('div', {id: 'audit-verify', 'aria-live': 'polite'});
  const marks = [null];  // bookmarks of the pages seen, for going back

  function query() {
    const q = {limit: 50};
    for (const key of ['doc', 'user', 'action', 'outcome']) q[key] = inputs[key].value.trim();
    for (const key of ['since', 'until']) {
      if (inputs[key].value) q[key] = new Date(inputs[key].value).toISOString();
    }
    return q;
  }

  function rows(entries) {
    return entries.map((e) => [e.time, e.user || '', e.action, e.outcome,
      e.doc_id ? el('button', {type: 'button', class: 'link', onclick: () => docHistory(e.doc_id, e.db)}, e.doc_id) : (e.path || ''),
      e.reason || '']);
  }

  async function load(page) {
    const answer = await attempt(() => api('GET', '/_couchgate/audit', {query: {...query(), next: marks[page]}}));
    if (!answer) return;
    marks.length = page + 1;
    if (answer.next) marks.push(answer.next);
    results.replaceChildren(
      table(`Audit entries, page ${page + 1}`, ['Time', 'User', 'Action', 'Outcome', 'Doc', 'Reason'], rows(answer.entries)),
      el('div', {class: 'actions'},
        page > 0 ? el('button', {type: 'button', onclick: () => load(page - 1)}, 'Previous page') : '',
        answer.next ? el('button', {type: 'button', onclick: () => load(page + 1)}, 'Next page') : ''));
    announce(`${answer.entries.length} audit entries on page ${page + 1}.`);
  }

  async function docHistory(id, db) {
    const answer = await attempt(() => api('GET', `/_couchgate/audit/docs/${docPath(id)}`, {query: {db, limit: 100}}));
    if (!answer) return;
    history.replaceChildren(el('h2', {}, `History of ${id}`),
      table(`Writes of ${id}`, ['Time', 'User', 'Action', 'Outcome', 'Rev before', 'Rev after'],
        answer.entries.map((e) => [e.time, e.user || '', e.action, e.outcome, e.rev_before || '', e.rev_after || ''])));
    $('h2', history).tabIndex = -1;
    $('h2', history).focus();
  }

  async function verify() {
    verifyOut.replaceChildren(el('p', {}, 'Checking every entry of every writer...'));
    const answer = await attempt(() => api('GET', '/_couchgate/audit/verify'));
    if (!answer) { verifyOut.replaceChildren(); return; }
    verifyOut.replaceChildren(
      el('p', {class: answer.intact ? 'ok' : 'error'}, answer.intact
        ? `Audit log intact: ${answer.entries} entries from ${answer.writers} writers.`
        : `${answer.breaks_total} breaks in ${answer.entries} entries.`),
      answer.breaks.length ? table('Breaks in the chain', ['Writer', 'Seq', 'Problem'],
        answer.breaks.map((b) => [b.writer, String(b.seq), b.problem])) : '');
  }

  const form = el('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); marks.length = 1; load(0); }},
    field('Doc id', inputs.doc), field('User', inputs.user), field('Action', inputs.action),
    field('Outcome', inputs.outcome), field('Since (your local time)', inputs.since), field('Until (your local time)', inputs.until),
    el('button', {type: 'submit'}, 'Filter'));
  root.append(el('h1', {}, 'Audit log'), form,
    el('div', {class: 'actions'}, el('button', {type: 'button', onclick: verify}, 'Verify the hash chain')),
    verifyOut, results, history);
  load(0);
}

// -- import --------------------------------------------------------------------------------

function importPage(root) {
  const fileInput = el('input', {name: 'file', type: 'file', accept: '.json,.ndjson,.jsonl,application/json', required: true});
  const dbInput = el('input', {name: 'db', value: DB, required: true});
  const mode = select('on_conflict', [['skip', 'skip'], ['overwrite', 'overwrite'], ['keep_both', 'keep both']], 'skip');
  const dryRun = el('input', {name: 'dry_run', type: 'checkbox'});
  const upload = el('progress', {max: 100, value: 0, 'aria-label': 'Upload'});
  const counts = el('p', {id: 'import-counts', 'aria-live': 'polite'});
  const results = el('div', {id: 'import-results'});
  const download = el('p', {id: 'import-download'});
  const SHOWN = 500;

  function run(event) {
    event.preventDefault();
    const file = fileInput.files[0];
    if (!file) return;
    const ndjson = /\.(ndjson|jsonl)$/i.test(file.name);
    const rows = [];
    const summary = {};
    let seen = 0;
    let tail = null;
    const xhr = new XMLHttpRequest();
    const url = new URL(`${dbPath(dbInput.value.trim())}/_couchgate/import`, location.origin);
    url.searchParams.set('on_conflict', mode.value);
    url.searchParams.set('dry_run', dryRun.checked ? 'true' : 'false');
    xhr.open('POST', url);
    xhr.setRequestHeader('Content-Type', ndjson ? 'application/x-ndjson' : 'application/json');
    xhr.setRequestHeader('Accept', 'application/x-ndjson');
    xhr.withCredentials = true;

    function render() {
      counts.textContent = `${rows.length} docs answered: ` +
        (Object.entries(summary).map(([s, n]) => `${s} ${n}`).join(', ') || 'none yet');
      results.replaceChildren(table(`Per-doc results${rows.length > SHOWN ? ` (first ${SHOWN})` : ''}`,
        ['#', 'Doc', 'Status', 'Rev', 'Reason'],
        rows.slice(0, SHOWN).map((r) => [String(r.index), r.id || '', r.status, r.rev || '', r.reason || ''])));
    }

    function take(final) {
      const text = xhr.responseText;
      const end = final ? text.length : text.lastIndexOf('\n') + 1;
      for (const line of text.slice(seen, end).split('\n')) {
        if (!line.trim()) continue;
        let item;
        try { item = JSON.parse(line); } catch (e) { continue; }
        if (item.status) { rows.push(item); summary[item.status] = (summary[item.status] || 0) + 1; }
        else tail = Object.assign(tail || {}, item);
      }
      seen = end;
      render();
    }

    xhr.upload.onprogress = (e) => { if (e.lengthComputable) upload.value = Math.round(100 * e.loaded / e.total); };
    xhr.onprogress = () => take(false);
    xhr.onload = () => {
      upload.value = 100;
      if (xhr.status !== 200) {
        let reason = xhr.responseText;
        try { reason = JSON.parse(xhr.responseText).reason; } catch (e) { /* as is */ }
        announce(`Import refused: ${reason}`, true);
        return;
      }
      take(true);
      const lines = rows.map((r) => JSON.stringify(r)).concat(tail ? [JSON.stringify(tail)] : []);
      const blob = new Blob([lines.join('\n') + '\n'], {type: 'application/x-ndjson'});
      download.replaceChildren(el('a', {href: URL.createObjectURL(blob), download: `import-results-${file.name}.ndjson`},
        'Download the results'));
      const problem = tail && tail.error ? ` It stopped early: ${tail.reason}` : '';
      announce(`Import ${dryRun.checked ? '(dry run) ' : ''}finished: ${rows.length} docs.${problem}`, Boolean(problem));
    };
    xhr.onerror = () => announce('The import could not be sent.', true);
    upload.value = 0;
    rows.length = 0;
    download.replaceChildren();
    announce(`Importing ${file.name}...`);
    xhr.send(file);
  }

  root.append(el('h1', {}, 'Import'),
    el('form', {class: 'stack', onsubmit: run},
      field('File (JSON array, {"docs": [...]}, _all_docs output, or NDJSON)', fileInput),
      field('Database', dbInput), field('When a doc exists and differs', mode),
      el('div', {class: 'check'}, dryRun, el('label', {for: (dryRun.id = 'import-dry-run')}, 'Dry run (write nothing)')),
      el('button', {type: 'submit'}, 'Import')),
    field('Upload progress', upload), counts, download, results);
}

// -- users ---------------------------------------------------------------------------------

function usersPage(root) {
  const inputs = {
    name: el('input', {name: 'name', type: 'search'}),
    warning: el('input', {name: 'warning', type: 'checkbox', id: 'users-warning'}),
    sort: select('sort', [['docs', 'docs in scope'], ['last_sync', 'last sync'], ['errors', 'errors'],
      ['refusals', 'refusals'], ['name', 'name']], 'docs'),
  };
  const list = el('div', {id: 'users-list'});
  const scope = el('div', {id: 'user-scope'});

  async function load(refresh) {
    const q = {sort: inputs.sort.value, name: inputs.name.value.trim(), limit: 500,
      warning: inputs.warning.checked ? 'true' : null, refresh: refresh ? 'true' : null};
    announce(refresh ? 'Counting every offline user\'s docs...' : '');
    const answer = await attempt(() => api('GET', '/_couchgate/users', {query: q}));
    if (!answer) return;
    list.replaceChildren(
      el('p', {}, `${answer.offline_users} offline users, ${answer.over_warn_limit} over ${answer.warn_limit} docs` +
        `${answer.complete ? '' : ' (still counting)'}. Sync activity as seen by replica ${answer.activity.replica} ` +
        `since ${answer.activity.since}.`),
      table('Offline users', ['User', 'Docs in scope', 'Over the limit', 'Last sync', 'Errors', 'Refusals', 'Last error'],
        answer.users.map((u) => [
          el('button', {type: 'button', class: 'link', onclick: () => showScope(u.name)}, u.name),
          u.docs === null ? 'counting' : String(u.docs), u.warning ? 'yes' : 'no', u.last_sync || 'never',
          String(u.errors), String(u.refusals), u.last_error ? `${u.last_error.at} (${u.last_error.route})` : '',
        ])));
    announce(`${answer.total_rows} users listed.`);
  }

  async function showScope(name) {
    const answer = await attempt(() => api('GET', `/_couchgate/users/${encodeURIComponent(name)}/scope`));
    if (!answer) return;
    scope.replaceChildren(
      el('h2', {}, `Scope of ${name}`),
      el('p', {class: answer.warning ? 'error' : ''}, `${answer.total} docs${answer.warning ? `, over the limit of ${answer.warn_limit}` : ''}; ` +
        `facilities ${answer.facility_ids.join(', ') || 'none'}; ${answer.offline ? 'offline' : 'online'} user.`),
      table(`Docs ${name} replicates, by kind`, ['Kind', 'Docs'],
        Object.entries(answer.by_kind).sort((a, b) => b[1] - a[1]).map(([kind, n]) => [kind, String(n)])));
    $('h2', scope).tabIndex = -1;
    $('h2', scope).focus();
  }

  root.append(el('h1', {}, 'Users'),
    el('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); load(false); }},
      field('Name contains', inputs.name), field('Sort by', inputs.sort),
      el('div', {class: 'check'}, inputs.warning, el('label', {for: 'users-warning'}, 'Only users over the limit')),
      el('button', {type: 'submit'}, 'Show users'),
      el('button', {type: 'button', onclick: () => load(true)}, 'Count again now')),
    list, scope);
  load(false);
}

// -- start ---------------------------------------------------------------------------------

$('#login-form').addEventListener('submit', login);
$('#logout').addEventListener('click', logout);
window.addEventListener('hashchange', route);
checkSession();
