"""Reads for offline users: attachments, `_all_docs`, `_bulk_get`, `_revs_diff` (one doc
and its revisions: `proxy.offline.revisions`).

A doc outside the user's scope looks exactly like a missing doc: same status, same body.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.couch.client import quote_id
from proxy.errors import BadRequest, json_response
from proxy.keys import COUCH
from proxy.offline.revisions import MISSING, REV, missing_revs, not_found, service
from proxy.offline.view import UserView
from proxy.params import nonneg_int, read_json
from proxy.passthrough import forward

MAX_BODY = 32 * 1024 * 1024


async def get_attachment(
    request: web.Request, view: UserView, path: CouchPath, db_path: str
) -> web.StreamResponse:
    doc_id = path.doc_id or ""
    if not await view.readable_now([doc_id]):
        raise not_found()
    rev = request.query.get("rev")
    if rev is not None and rev != view.winner_rev(doc_id):
        # An attachment of another revision: only if that revision is readable itself.
        result = await request.app[COUCH].json("GET", f"{db_path}/{quote_id(doc_id)}", params={"rev": rev})
        if not result.ok or not isinstance(result.body, dict) or not view.revision_readable(result.body):
            raise not_found()
    return await forward(request, path, service(request))


async def revs_diff(request: web.Request, view: UserView, db_path: str) -> web.Response:
    body = await read_json(request, MAX_BODY)
    if not isinstance(body, dict) or not all(
        isinstance(v, list) and all(isinstance(r, str) for r in v) for v in body.values()
    ):
        raise BadRequest("_revs_diff needs an object of doc ids to arrays of revisions")
    readable = view.readable_ids(body)
    answer: dict[str, Any] = {
        doc_id: {"missing": revs} for doc_id, revs in body.items() if doc_id not in readable
    }
    asked = {doc_id: revs for doc_id, revs in body.items() if doc_id in readable}
    if asked:
        result = await request.app[COUCH].json("POST", f"{db_path}/_revs_diff", body=asked)
        if isinstance(result.body, dict):
            answer.update(result.body)
    return json_response({k: answer[k] for k in body if k in answer})


def _missing_row(doc_id: object, rev: object) -> dict[str, Any]:
    error = {
        "id": doc_id,
        "rev": rev if isinstance(rev, str) else "undefined",
        "error": "not_found",
        "reason": MISSING,
    }
    return {"id": doc_id, "docs": [{"error": error}]}


def _readable_revisions(view: UserView, row: Any) -> Any:
    """A `_bulk_get` row with each revision the user may not see itself made missing."""
    docs = row.get("docs") if isinstance(row, dict) else None
    if not isinstance(docs, list):
        return row
    for i, item in enumerate(docs):
        doc = item.get("ok") if isinstance(item, dict) else None
        if isinstance(doc, dict) and not view.revision_readable(doc):
            docs[i] = _missing_row(doc.get("_id"), doc.get("_rev"))["docs"][0]
    return row


async def bulk_get(request: web.Request, view: UserView, db_path: str) -> web.Response:
    body = await read_json(request, MAX_BODY)
    docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(docs, list) or not all(
        isinstance(d, dict) and isinstance(d.get("id"), str) for d in docs
    ):
        raise BadRequest('_bulk_get needs {"docs": [{"id": ..., "rev": ...}, ...]}')
    for d in docs:
        if "rev" in d and not (isinstance(d["rev"], str) and REV.match(d["rev"])):
            raise BadRequest("each rev must be a revision string")
    readable = await view.readable_now(d["id"] for d in docs)
    latest = request.query.get("latest") == "true"
    wanted: list[dict[str, Any]] = []
    missing_pairs: set[tuple[str, str]] = set()
    if latest:  # a missing rev is never sent upstream with `latest` (it crashes pouchdb-server)
        by_id: dict[str, list[str]] = {}
        for d in docs:
            if d["id"] in readable and isinstance(d.get("rev"), str):
                by_id.setdefault(d["id"], []).append(d["rev"])
        missing_pairs = await missing_revs(request, view, db_path, by_id)
    asked_at: set[int] = set()
    for i, d in enumerate(docs):
        if d["id"] in readable and (d["id"], d.get("rev")) not in missing_pairs:
            wanted.append(d)
            asked_at.add(i)
    upstream_rows: list[Any] = []
    if wanted:
        result = await request.app[COUCH].json(
            "POST", f"{db_path}/_bulk_get", body={"docs": wanted}, params=dict(request.query)
        )
        if isinstance(result.body, dict):
            upstream_rows = list(result.body.get("results") or [])
    # Upstream answers one row per requested doc, in order; put ours in between.
    rows: list[Any] = []
    upstream_iter = iter(upstream_rows)
    for i, d in enumerate(docs):
        if i in asked_at:
            rows.append(_readable_revisions(view, next(upstream_iter, _missing_row(d["id"], d.get("rev")))))
        else:
            rows.append(_missing_row(d["id"], d.get("rev")))
    return json_response({"results": rows})


async def all_docs(request: web.Request, view: UserView, db_path: str) -> web.Response:
    q = request.query
    body = await read_json(request, MAX_BODY, empty={}) if request.method == "POST" else {}
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    keys = body.get("keys")
    if keys is None and "keys" in q:
        keys = _json_param(q["keys"], "keys")
    include_docs = q.get("include_docs") == "true"
    params = {k: v for k, v in q.items() if k in {"include_docs", "conflicts", "attachments", "update_seq"}}
    couch = request.app[COUCH]
    if keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("keys must be an array of strings")
        readable = view.readable_ids(keys)
        found: dict[str, Any] = {}
        asked = [k for k in dict.fromkeys(keys) if k in readable]
        if asked:
            result = await couch.json("POST", f"{db_path}/_all_docs", body={"keys": asked}, params=params)
            for row in (result.body or {}).get("rows", []) if isinstance(result.body, dict) else []:
                if isinstance(row, dict) and "key" in row:
                    found[row["key"]] = row
        rows = [found.get(k) or {"key": k, "error": "not_found"} for k in keys]
        total = view.live_count()
        return json_response({"total_rows": total, "offset": 0, "rows": rows})
    ids = sorted(view.live_ids())
    total = len(ids)
    descending = q.get("descending") == "true"
    start = _key(q, body, "startkey", "start_key")
    end = _key(q, body, "endkey", "end_key")
    inclusive_end = q.get("inclusive_end", "true") != "false"
    if descending:
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
    skip = nonneg_int(q.get("skip"), "skip") or 0
    limit = nonneg_int(q.get("limit"), "limit")
    offset = ids.index(selected[0]) + skip if selected else total
    page = selected[skip:] if limit is None else selected[skip : skip + limit]
    rows = []
    if page:
        result = await couch.json("POST", f"{db_path}/_all_docs", body={"keys": page}, params=params)
        by_key = {
            row["key"]: row
            for row in ((result.body or {}).get("rows", []) if isinstance(result.body, dict) else [])
            if isinstance(row, dict) and "key" in row and "error" not in row
        }
        rows = [by_key[i] for i in page if i in by_key and not (by_key[i].get("value") or {}).get("deleted")]
        if not include_docs:
            for row in rows:
                row.pop("doc", None)
    return json_response({"total_rows": total, "offset": offset, "rows": rows})


def _json_param(raw: str, name: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{name} must be JSON") from exc


def _key(q: Any, body: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in body:
            value = body[name]
        elif name in q:
            value = _json_param(q[name], name)
        else:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string doc id")
        return value
    return None
