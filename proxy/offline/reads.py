"""Reads for offline users: attachments, `_all_docs`, `_bulk_get`, `_revs_diff` (one doc
and its revisions: `proxy.offline.revisions`).

A doc outside the user's scope looks exactly like a missing doc: same status, same body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit.recorder import Recorder
from proxy.couch.validate import valid_rev
from proxy.errors import BadRequest, PayloadTooLarge, QueryParseError, TooManyItems, json_response, json_rows
from proxy.forward.relay import forward
from proxy.keys import REMOVALS, SETTINGS
from proxy.offline import leaves, query
from proxy.offline.derived import Made, generation
from proxy.offline.removals import made_doc
from proxy.offline.revisions import MISSING, REV, couch_docs, missing_revs, not_found, service
from proxy.offline.view import Judged, UserView
from proxy.params import read_json


async def get_attachment(
    request: web.Request, view: UserView, path: CouchPath, db_path: str
) -> web.StreamResponse:
    """An attachment of the revision the index judged (or of a named revision judged itself):
    never of a newer winner that may have left the scope since."""
    doc_id = path.doc_id or ""
    params = query.parse(request.query, query.ATTACHMENT)
    rev = params.get("rev")
    if rev is None:
        await view.sync.sync()  # the winner as of now (read-your-writes), then pinned
    if not await view.readable_now([doc_id]):
        raise not_found()
    winner = view.winner_rev(doc_id)
    if rev is not None and rev != winner:
        made = (await made_up(request, view, [(doc_id, rev)])).get((doc_id, rev))
        if made is not None:  # a return carries its upstream leaf's attachments (a removal, none)
            if made.deleted:
                raise not_found()
            rev = made.upstream
    if rev is not None and rev != winner:
        body = await couch_docs(request, db_path).revision(doc_id, rev)
        if body is None or not view.servable(body):
            raise not_found()
    return await forward(request, path, service(request), query={"rev": rev or winner or ""})


async def revs_diff(request: web.Request, view: UserView, db_path: str) -> web.Response:
    body = await read_json(request, request.app[SETTINGS].max_json_bytes)
    if not isinstance(body, dict) or not all(
        isinstance(v, list) and all(isinstance(r, str) for r in v) for v in body.values()
    ):
        raise BadRequest("_revs_diff needs an object of doc ids to arrays of revisions")
    limit = request.app[SETTINGS].max_bulk_items
    if sum(len(revs) for revs in body.values()) > limit:
        raise PayloadTooLarge(f"_revs_diff names at most {limit} revisions")
    if not all(valid_rev(r) for revs in body.values() for r in revs):
        raise BadRequest("Invalid rev format")  # CouchDB's answer, for any id
    # Revisions couchgate made up (proxy.offline.removals) are the device's already: never
    # missing. The ledger is read (`made_up`) while CouchDB is asked about the revisions the
    # user may see, made-up ones among them (it reports them missing; they are taken out of
    # its answer).
    readable = view.readable_ids(body)
    asked = {doc_id: revs for doc_id, revs in body.items() if doc_id in readable}
    pairs = [(doc_id, rev) for doc_id, revs in body.items() for rev in revs]
    made, upstream = await asyncio.gather(
        made_up(request, view, pairs, readable), couch_docs(request, db_path).revs_diff(asked)
    )
    body = {doc_id: [r for r in revs if (doc_id, r) not in made] for doc_id, revs in body.items()}
    body = {doc_id: revs for doc_id, revs in body.items() if revs}
    asked = {doc_id: revs for doc_id, revs in asked.items() if doc_id in body}
    answer: dict[str, Any] = {
        doc_id: {"missing": revs} for doc_id, revs in body.items() if doc_id not in readable
    }
    for doc_id, entry in upstream.items():
        if doc_id in asked and isinstance(entry, dict):
            missing = [r for r in _missing(entry) if (doc_id, r) not in made]
            if missing:
                # Only `missing`: CouchDB's `possible_ancestors` names leaves the user may
                # not see (it is optional: a replicator then sends every attachment).
                answer[doc_id] = {"missing": missing}
    if asked:
        # A conflict leaf the user may not see is, for them, a revision CouchDB lacks.
        present = [
            (doc_id, rev) for doc_id, revs in asked.items() for rev in revs
            if view.is_leaf(doc_id, rev) and rev not in _missing(answer.get(doc_id))
        ]  # fmt: skip
        shown = await leaves.servable(request, view, db_path, present) if present else set()
        for doc_id, rev in present:
            if (doc_id, rev) not in shown:
                entry = answer.setdefault(doc_id, {"missing": []})
                entry.setdefault("missing", []).append(rev)
    answer = {k: answer[k] for k in body if k in answer}
    # What the device will push next: its intent is stored while the device reads the docs.
    missing = [
        (doc_id, rev) for doc_id, entry in answer.items() for rev in _missing(entry) if isinstance(rev, str)
    ]
    Recorder.of(request).announce_push(view.sync.db, view.user.name, missing)
    return json_response(answer)


def _missing(entry: Any) -> list[Any]:
    missing = entry.get("missing") if isinstance(entry, dict) else None
    return missing if isinstance(missing, list) else []


def _missing_row(doc_id: object, rev: object) -> dict[str, Any]:
    error = {
        "id": doc_id,
        "rev": rev if isinstance(rev, str) else "undefined",
        "error": "not_found",
        "reason": MISSING,
    }
    return {"id": doc_id, "docs": [{"error": error}]}


def _servable_revisions(view: UserView, row: Any, readable: Judged, asked: str | None) -> Any:
    """A `_bulk_get` row with each revision the user may not see left out: CouchDB answers
    every leaf of an id asked without a revision, and with `latest` every leaf below the
    one asked, so a row of errors for them would count the leaves the user may not know
    of. A row left with none is a missing doc's, named by the revision asked for
    (`asked`), never by a refused body's."""
    docs = row.get("docs") if isinstance(row, dict) else None
    if not isinstance(docs, list):
        return row
    judged = []
    for item in docs:
        doc = item.get("ok") if isinstance(item, dict) else None
        if not (isinstance(doc, dict) and not view.servable(doc, readable)):
            judged.append(item)
    if len(judged) < len(docs) and not any(isinstance(i, dict) and "ok" in i for i in judged):
        return _missing_row(row.get("id"), asked)
    return {**row, "docs": judged}  # a new row: one upstream row may answer a doc asked twice


def _bulk_get_item(d: Any) -> dict[str, Any]:
    """One asked-for doc, rebuilt from what couchgate reads of it (`id`, `rev`, `atts_since`)."""
    if not isinstance(d, dict) or not isinstance(d.get("id"), str):
        raise BadRequest('_bulk_get needs {"docs": [{"id": ..., "rev": ...}, ...]}')
    item: dict[str, Any] = {"id": d["id"]}
    if "rev" in d:
        if not (isinstance(d["rev"], str) and REV.match(d["rev"])):
            raise BadRequest("each rev must be a revision string")
        item["rev"] = d["rev"]
    if "atts_since" in d:
        since = d["atts_since"]
        if not isinstance(since, list) or not all(isinstance(r, str) and REV.match(r) for r in since):
            raise BadRequest("atts_since must be an array of revisions")
        item["atts_since"] = since
    return item


async def bulk_get(request: web.Request, view: UserView, db_path: str) -> web.StreamResponse:
    params = query.parse(request.query, query.BULK_GET)
    body = await read_json(request, request.app[SETTINGS].max_json_bytes)
    raw_docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(raw_docs, list):
        raise BadRequest('_bulk_get needs {"docs": [{"id": ..., "rev": ...}, ...]}')
    limit = request.app[SETTINGS].max_bulk_items
    if len(raw_docs) > limit:
        raise TooManyItems(str(limit), error="max_bulk_get_count_exceeded")
    since = [d.get("atts_since") for d in raw_docs if isinstance(d, dict)]
    if sum(len(s) for s in since if isinstance(s, list)) > limit:
        raise PayloadTooLarge(f"_bulk_get names at most {limit} revisions in atts_since")
    docs = [_bulk_get_item(d) for d in raw_docs]
    first = view.judged(view.readable_ids(d["id"] for d in docs))
    made = await made_up(request, view, [(d["id"], d["rev"]) for d in docs if "rev" in d], first.readable)
    synthesized = await made_docs(request, view, db_path, made, params)
    docs_asked = docs
    docs = [d for d in docs if (d["id"], d.get("rev")) not in made]
    readable = await view.readable_now((d["id"] for d in docs), first)
    judged = view.judged(readable)
    latest = params.get("latest", False)
    missing_pairs: set[tuple[str, str]] = set()
    if latest:  # a missing rev is never sent upstream with `latest` (it crashes pouchdb-server)
        by_id: dict[str, list[str]] = {}
        for d in docs:
            if d["id"] in readable and "rev" in d:
                by_id.setdefault(d["id"], []).append(d["rev"])
        missing_pairs = await missing_revs(request, view, db_path, by_id)
    # Each distinct request once upstream (pouchdb-server folds repeats into one row,
    # CouchDB answers each): one row per distinct request, in order.
    distinct: dict[bytes, dict[str, Any]] = {}
    for d in docs:
        if d["id"] in readable and (d["id"], d.get("rev")) not in missing_pairs:
            distinct.setdefault(orjson.dumps(d, option=orjson.OPT_SORT_KEYS), d)
    rows = await couch_docs(request, db_path).bulk_get_rows(list(distinct.values()), query.encode(params))
    answered = dict(zip(distinct, rows, strict=True))
    # One row object per distinct item asked: an item asked many times is written many times
    # from one row (`json_rows`), never copied.
    rows_for: dict[bytes, Any] = {}
    results = []
    for d in docs_asked:
        key = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        result = rows_for.get(key)
        if result is None:
            pair = (d["id"], d.get("rev"))
            if pair in made:
                body = synthesized.get(pair)
                result = {"id": d["id"], "docs": [{"ok": body}]} if body else _missing_row(*pair)
            elif (row := answered.get(key)) is None:
                result = _missing_row(*pair)
            else:
                result = _servable_revisions(view, row, judged, d.get("rev"))
            rows_for[key] = result
        results.append(result)
    return await json_rows(request, b'{"results":[', results, b"]}")


async def made_up(
    request: web.Request, view: UserView, pairs: list[tuple[str, str]], readable: set[str] | None = None
) -> dict[tuple[str, str], Made]:
    """Of these (doc, rev) pairs, the revisions couchgate made up for this user's devices.

    The ledger is read when some pair may be one: a revision past the first generation (a
    made-up one is the child of an upstream leaf) that is not a leaf of a doc in `readable`
    (given, or judged here). Whether a doc the user may not read exists, or which revision
    it stands at, never decides whether the ledger is read: the same work (the same time)
    for it as for an id no doc has."""
    removals = request.app[REMOVALS]
    if readable is None:
        readable = view.readable_ids(doc_id for doc_id, _ in pairs)
    candidates = [
        (doc_id, rev) for doc_id, rev in pairs
        if generation(rev) > 1 and not (doc_id in readable and view.is_leaf(doc_id, rev))
    ]  # fmt: skip
    if not removals.enabled or not candidates:
        return {}
    ledger = await removals.ledger(view.user.name)
    found = {}
    for doc_id, rev in candidates:
        made = removals.recognise(ledger, doc_id, rev)
        if made is not None:
            found[(doc_id, rev)] = made
    return found


async def made_docs(
    request: web.Request,
    view: UserView,
    db_path: str,
    made: dict[tuple[str, str], Made],
    params: dict[str, Any],
) -> dict[tuple[str, str], dict[str, Any]]:
    """The bodies of made-up revisions, grown from their upstream leaves (read once, with
    their history): a deletion always (it shows nothing), a return only while the doc and
    the leaf's body are the user's to read, with the leaf's attachments as the request
    asked for them (stubs, or inline with `attachments=true`; PouchDB's replicator then
    reads each one by the return's revision: `get_attachment`)."""
    if not made:
        return {}
    wanted = list(dict.fromkeys((doc_id, m.upstream) for (doc_id, _), m in made.items()))
    upstream = await couch_docs(request, db_path).revisions(
        wanted, revs=True, attachments=params.get("attachments", False),
        att_encoding_info=params.get("att_encoding_info", False),
    )  # fmt: skip
    readable = view.readable_ids(doc_id for doc_id, _ in made)
    bodies = {}
    for (doc_id, rev), m in made.items():
        leaf = upstream.get((doc_id, m.upstream))
        if leaf is None and m.deleted:
            # The leaf it grew from is gone upstream (stemmed past the revs limit by later
            # edits, or compacted): a deletion needs no body, only the leaf's own id to
            # stand on. Never a not_found: PouchDB would stop every pull that lists it.
            leaf = {}
        if leaf is None:
            continue
        if not m.deleted and (doc_id not in readable or not view.servable(leaf)):
            continue
        bodies[(doc_id, rev)] = made_doc(m, doc_id, leaf)
    return bodies


async def _all_docs_rows(
    request: web.Request, view: UserView, db_path: str, keys: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    """CouchDB's `_all_docs` rows for these keys, each doc body judged before it is served
    (a body the user may not see now, the row of a missing doc)."""
    wanted = {
        k: v
        for k, v in params.items()
        if k in {"include_docs", "conflicts", "attachments", "att_encoding_info"}
    }
    rows = await couch_docs(request, db_path).all_docs_rows(keys, query.encode(wanted))
    found = {
        key: row
        for key, row in rows.items()
        if not isinstance(row.get("doc"), dict) or view.servable(row["doc"])
    }
    if wanted.get("conflicts") and wanted.get("include_docs"):
        served = [r["doc"] for r in found.values() if isinstance(r.get("doc"), dict)]
        await leaves.filter_conflicts(request, view, db_path, served)
    return found


async def all_docs(request: web.Request, view: UserView, db_path: str) -> web.StreamResponse:
    params = query.parse(request.query, query.ALL_DOCS)
    body = (
        await read_json(request, request.app[SETTINGS].max_json_bytes, empty={})
        if request.method == "POST"
        else {}
    )
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if "keys" in body and "keys" in params:
        # CouchDB's words for `keys` in both the query and the body:
        raise QueryParseError("`keys` is incompatible with `key`, `start_key` and `end_key`")
    keys = body.get("keys", params.get("keys"))
    keys_offset = b"null" if keys is not None else b"0"  # CouchDB's, for `keys`
    if keys is None and "key" in params:
        keys = [params["key"]]
    if keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("keys must be an array of strings")
        if len(keys) > request.app[SETTINGS].max_bulk_items:
            raise PayloadTooLarge(f"_all_docs takes at most {request.app[SETTINGS].max_bulk_items} keys")
        keys = keys[params.get("skip", 0) :]  # CouchDB pages the keys as asked, missing ones too
        if params.get("limit") is not None:
            keys = keys[: params["limit"]]
        readable = view.readable_ids(keys)
        asked = [k for k in dict.fromkeys(keys) if k in readable]
        found = await _all_docs_rows(request, view, db_path, asked, params) if asked else {}
        rows = [found.get(k) or {"key": k, "error": "not_found"} for k in keys]
        head = b'{"total_rows":%d,"offset":%s,"rows":[' % (view.live_count(), keys_offset)
        return await json_rows(request, head, rows, b"]}")
    ids = sorted(view.live_ids())
    total = len(ids)
    start = _key(params, body, "startkey", "start_key")
    end = _key(params, body, "endkey", "end_key")
    inclusive_end = params.get("inclusive_end", True)
    if params.get("descending", False):
        ids.reverse()
        selected = [
            i for i in ids
            if (start is None or i <= start) and (end is None or (i >= end if inclusive_end else i > end))
        ]  # fmt: skip
    else:
        selected = [
            i for i in ids
            if (start is None or i >= start) and (end is None or (i <= end if inclusive_end else i < end))
        ]  # fmt: skip
    skip = params.get("skip", 0)
    limit = params.get("limit")
    offset = ids.index(selected[0]) + min(skip, len(selected)) if selected else total
    page = selected[skip:] if limit is None else selected[skip : skip + limit]
    rows = []
    if page:
        found = await _all_docs_rows(request, view, db_path, page, params)
        rows = [
            found[i] for i in page
            if i in found and "error" not in found[i] and not (found[i].get("value") or {}).get("deleted")
        ]  # fmt: skip
        if not params.get("include_docs", False):
            for row in rows:
                row.pop("doc", None)
    return json_response({"total_rows": total, "offset": offset, "rows": rows})


def _key(params: dict[str, Any], body: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in body:
            value = body[name]
        elif name in params:
            value = params[name]
        else:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string doc id")
        return value
    return None
