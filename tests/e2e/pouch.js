// A real PouchDB 9 client, driven by the e2e tests. Commands read JSON from argv[2]:
//   {"op": "sync", "url", "auth": {"basic": [name, pw]} | {"bearer": token}, "push": [docs]}
// pushes `push` from a fresh in-memory db to `url`, pulls everything back into a second
// in-memory db, and prints a JSON summary on stdout.
'use strict';
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-replication'));

// `trace`: when an object with a `calls` array, each request made through this remote is
// appended to it as {run, method, path, query, status, ms} while `trace.on` is true
// (benchmarks' profiling).
function remote(url, auth, trace) {
  const opts = {skip_setup: true};
  if (auth && auth.basic) {
    opts.auth = {username: auth.basic[0], password: auth.basic[1]};
  }
  const bearer = auth && auth.bearer;
  if (bearer || trace) {
    opts.fetch = async (u, o) => {
      if (bearer) {
        o.headers.set('Authorization', 'Bearer ' + bearer);
      }
      if (!trace || !trace.on) {
        return PouchDB.fetch(u, o);
      }
      const t = process.hrtime.bigint();
      const res = await PouchDB.fetch(u, o);
      const path = new URL(u).pathname;
      const query = new URL(u).search;
      trace.calls.push({run: trace.run, method: o.method || 'GET', path, query, status: res.status,
        ms: Number(process.hrtime.bigint() - t) / 1e6});
      return res;
    };
  }
  return new PouchDB(url, opts);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function allDocs(db) {
  const res = await db.allDocs({include_docs: true});
  return res.rows.map((r) => r.doc);
}

async function sync(cmd) {
  const target = remote(cmd.url, cmd.auth);
  const local = new PouchDB('push-' + Math.random(), {adapter: 'memory'});
  if (cmd.push && cmd.push.length) {
    await local.bulkDocs(cmd.push);
  }
  const pushed = await local.replicate.to(target);
  const pulledDb = new PouchDB('pull-' + Math.random(), {adapter: 'memory'});
  const pulled = await pulledDb.replicate.from(target);
  // A second pull must find nothing new: checkpoints were written through couchgate.
  const again = await pulledDb.replicate.from(target);
  const docs = await allDocs(pulledDb);
  return {
    push: {ok: pushed.ok, docs_written: pushed.docs_written, errors: pushed.errors.length},
    pull: {ok: pulled.ok, docs_written: pulled.docs_written, errors: pulled.errors.length},
    again: {docs_read: again.docs_read},
    ids: docs.map((d) => d._id).sort(),
    docs,
  };
}

// {"op": "pull_push", "url", "auth", "push": [docs]}: an offline user's first sync: pull
// everything, then create `push` locally and push it; prints the pulled ids and push stats.
async function pullPush(cmd) {
  const target = remote(cmd.url, cmd.auth);
  const local = new PouchDB('user-' + Math.random(), {adapter: 'memory'});
  const pulled = await local.replicate.from(target);
  const ids = (await allDocs(local)).map((d) => d._id).sort();
  let pushed = null;
  if (cmd.push && cmd.push.length) {
    await local.bulkDocs(cmd.push);
    const res = await local.replicate.to(target);
    pushed = {ok: res.ok, docs_written: res.docs_written, doc_write_failures: res.doc_write_failures,
      errors: res.errors.map((e) => ({id: e.id, name: e.name, status: e.status}))};
  }
  return {pull: {ok: pulled.ok, docs_written: pulled.docs_written}, ids, pushed};
}

// {"op": "live", "url", "auth"}: a live pull; prints one JSON line per change batch
// ({"ids": [...], "deleted": [...]}) until killed. The first line says it is listening.
async function live(cmd) {
  const target = remote(cmd.url, cmd.auth);
  const local = new PouchDB('live-' + Math.random(), {adapter: 'memory'});
  const first = await local.replicate.from(target);
  const ids = (await allDocs(local)).map((d) => d._id).sort();
  process.stdout.write(JSON.stringify({ready: true, ids, docs_written: first.docs_written}) + '\n');
  const rep = local.replicate.from(target, {live: true, retry: true, heartbeat: 2000});
  rep.on('change', (info) => {
    const docs = info.docs || [];
    process.stdout.write(JSON.stringify({
      ids: docs.filter((d) => !d._deleted).map((d) => d._id),
      deleted: docs.filter((d) => d._deleted).map((d) => d._id),
    }) + '\n');
  });
  rep.on('error', (err) => process.stdout.write(JSON.stringify({error: String(err)}) + '\n'));
  await new Promise(() => {});
}

// {"op": "pull_timed", "url", "auth", "batch_size"?, "noops"?, "trace"?}: (benchmarks) a
// first pull into an empty db, then `noops` (default 1) no-op pulls from its checkpoint;
// prints the first pull's duration and the median no-op's in ms (each no-op in `noop_runs`).
// With `trace`, also every no-op's requests (`noop_calls`: run, method, path, query, status, ms).
async function pullTimed(cmd) {
  const trace = cmd.trace ? {on: false, run: 0, calls: []} : null;
  const target = remote(cmd.url, cmd.auth, trace);
  const local = new PouchDB('bench-' + Math.random(), {adapter: 'memory'});
  const opts = {batch_size: cmd.batch_size || 100};
  let t = process.hrtime.bigint();
  const first = await local.replicate.from(target, {...opts});
  const firstMs = Number(process.hrtime.bigint() - t) / 1e6;
  const runs = [];
  let noopDocs = 0;
  const noops = Math.max(1, cmd.noops || 1);
  for (let i = 0; i < noops; i++) {
    if (trace) {
      trace.run = i;
      trace.on = true;
    }
    t = process.hrtime.bigint();
    const again = await local.replicate.from(target, {...opts});
    runs.push(Number(process.hrtime.bigint() - t) / 1e6);
    noopDocs += again.docs_written;
  }
  const result = {first_ms: firstMs, docs: first.docs_written, noop_ms: median(runs), noop_runs: runs,
    noop_docs: noopDocs};
  if (trace) {
    trace.on = false;
    result.noop_calls = trace.calls;
  }
  return result;
}

// {"op": "push_timed", "url", "auth", "docs_file", "edit"?, "batch_size"?}: (benchmarks) an
// offline device's push: the docs of `docs_file` (a JSON array) are written into an empty
// local db, then one replication to `url` is timed (`push_ms`); with `edit`, every doc is
// then changed locally and a second push timed (`edit_ms`).
async function pushTimed(cmd) {
  const target = remote(cmd.url, cmd.auth);
  const local = new PouchDB('push-' + Math.random(), {adapter: 'memory'});
  await local.bulkDocs(JSON.parse(require('fs').readFileSync(cmd.docs_file, 'utf8')));
  const opts = {batch_size: cmd.batch_size || 100};
  let t = process.hrtime.bigint();
  const pushed = await local.replicate.to(target, opts);
  const result = {push_ms: Number(process.hrtime.bigint() - t) / 1e6, docs_written: pushed.docs_written,
    failures: pushed.doc_write_failures};
  if (cmd.edit) {
    const docs = await allDocs(local);
    await local.bulkDocs(docs.map((d) => ({...d, edited: true})));
    t = process.hrtime.bigint();
    const again = await local.replicate.to(target, opts);
    result.edit_ms = Number(process.hrtime.bigint() - t) / 1e6;
    result.edits_written = again.docs_written;
    result.edit_failures = again.doc_write_failures;
  }
  return result;
}

// {"op": "conflict", "url", "auth", "id"}: two offline devices pull `id`, edit it
// differently (one grows its `read` list, the other changes `v`), then both push.
async function conflict(cmd) {
  const target = remote(cmd.url, cmd.auth);
  const devices = [0, 1].map((i) => new PouchDB(`device${i}-` + Math.random(), {adapter: 'memory'}));
  for (const device of devices) {
    await device.replicate.from(target);
  }
  const [a, b] = await Promise.all(devices.map((d) => d.get(cmd.id)));
  await devices[0].put({...a, read: [...a.read, 'device_a_user']});
  await devices[1].put({...b, v: b.v + 1});
  const pushes = [];
  for (const device of devices) {
    const res = await device.replicate.to(target);
    pushes.push(res.docs_written);
  }
  return {pushes};
}

// {"op": "session"}: devices that live as long as the process, driven by JSON lines on
// stdin, one answer line each on stdout:
//   {"cmd": "pull"|"push", "device", "url", "auth"} -> replication stats (errors, denied; a
//     pull's duration in `ms`, and with `trace` its requests in `calls`);
//   {"cmd": "docs", "device", "attachments"} -> the device's live docs (allDocs, include_docs,
//     conflicts; with attachments: true, their data inline in base64);
//   {"cmd": "put", "device", "doc"} -> a local write;
//   {"cmd": "live", "device", "url", "auth"} -> starts a live pull (answers at once);
//   {"cmd": "until", "device", "absent": [ids], "present": [ids], "timeout_ms"} -> waits until
//     the device holds none of `absent` and all of `present` (a live pull's work);
//   {"cmd": "stop"} ends the session.
async function session() {
  const devices = {};
  const lives = {};
  const device = (name) => (devices[name] = devices[name] || new PouchDB('dev-' + name + '-' + Math.random(), {adapter: 'memory'}));
  const held = async (name, attachments) => (await device(name).allDocs(
    {include_docs: true, conflicts: true, attachments: !!attachments})).rows.map((r) => r.doc);
  const stats = (res) => ({ok: res.ok, docs_read: res.docs_read, docs_written: res.docs_written,
    doc_write_failures: res.doc_write_failures, errors: res.errors.map((e) => ({id: e.id, name: e.name}))});
  const readline = require('readline');
  const lines = readline.createInterface({input: process.stdin});
  for await (const line of lines) {
    const cmd = JSON.parse(line);
    let answer;
    try {
      if (cmd.cmd === 'stop') {
        Object.values(lives).forEach((r) => r.cancel());
        process.stdout.write(JSON.stringify({stopped: true}) + '\n');
        break;
      } else if (cmd.cmd === 'pull') {
        const trace = cmd.trace ? {on: true, run: 0, calls: []} : null;
        const t = process.hrtime.bigint();
        const res = await device(cmd.device).replicate.from(remote(cmd.url, cmd.auth, trace));
        answer = {...stats(res), ms: Number(process.hrtime.bigint() - t) / 1e6, calls: trace ? trace.calls : undefined};
      } else if (cmd.cmd === 'push') {
        let denied = 0;
        const rep = device(cmd.device).replicate.to(remote(cmd.url, cmd.auth));
        rep.on('denied', () => { denied += 1; });
        answer = {...stats(await rep), denied};
      } else if (cmd.cmd === 'docs') {
        answer = {docs: await held(cmd.device, cmd.attachments)};
      } else if (cmd.cmd === 'put') {
        answer = await device(cmd.device).put(cmd.doc);
      } else if (cmd.cmd === 'live') {
        lives[cmd.device] = device(cmd.device).replicate.from(remote(cmd.url, cmd.auth), {live: true, retry: true, heartbeat: 1000});
        answer = {live: true};
      } else if (cmd.cmd === 'until') {
        const deadline = Date.now() + (cmd.timeout_ms || 30000);
        let ids = [];
        for (;;) {
          ids = (await held(cmd.device)).map((d) => d._id);
          const done = (cmd.absent || []).every((i) => !ids.includes(i)) && (cmd.present || []).every((i) => ids.includes(i));
          if (done || Date.now() > deadline) {
            answer = {done, ids};
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    } catch (err) {
      answer = {error: String(err && (err.message || err)), status: err && err.status};
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  }
  return {ended: true};
}

async function main() {
  const cmd = JSON.parse(process.argv[2]);
  const ops = {sync, pull_push: pullPush, live, pull_timed: pullTimed, push_timed: pushTimed, conflict, session};
  const result = await ops[cmd.op](cmd);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({error: String(err && (err.message || err)), status: err && err.status}) + '\n');
  process.exit(1);
});
