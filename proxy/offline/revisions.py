"""One doc for offline users: `GET /{db}/{id}`, with `rev=` and `open_revs=`.

The index decides whether the user may see the doc at all (else it looks missing); every
body read from CouchDB is then judged itself before it is served (`UserView.servable`),
so a doc that moved out of scope a moment ago, or a past or conflicting revision placed
elsewhere, looks missing too. What goes upstream is rebuilt from the parsed parameters
(`proxy.offline.query`). pouchdb-server dies on `latest=true` for a rev it lacks, so a
rev is known to exist before `latest` is ever sent with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.couch.docs import Docs, history
from proxy.errors import NotFound, dumps, json_response
from proxy.keys import COUCH
from proxy.offline import leaves, query
from proxy.offline.view import UserView

MISSING = "missing"
REV = query.REV


def not_found() -> NotFound:
    return NotFound(MISSING)


def service(request: web.Request) -> dict[str, str]:
    return {"Authorization": request.app[COUCH].service_auth}


def couch_docs(request: web.Request, db_path: str) -> Docs:
    """The reads of the offline user's database, as the service account (they fail closed)."""
    return Docs(request.app[COUCH], db_path)


async def missing_revs(
    request: web.Request, view: UserView, db_path: str, wanted: Mapping[str, list[str]]
) -> set[tuple[str, str]]:
    """The (id, rev) pairs CouchDB does not have. Revs the index knows as leaves exist, so
    only the others are asked about (one `_revs_diff` for all of them)."""
    unknown = {doc_id: [r for r in revs if not view.is_leaf(doc_id, r)] for doc_id, revs in wanted.items()}
    ask = {doc_id: revs for doc_id, revs in unknown.items() if revs}
    answer = await couch_docs(request, db_path).revs_diff(ask)
    return {
        (doc_id, rev)
        for doc_id, entry in answer.items()
        for rev in entry.get("missing", ())
        if isinstance(rev, str)
    }


async def get_doc(request: web.Request, view: UserView, path: CouchPath, db_path: str) -> web.StreamResponse:
    doc_id = path.doc_id or ""
    params = query.parse(request.query, query.DOC)
    if not await view.readable_now([doc_id]):
        raise not_found()
    if "open_revs" in params:
        return await open_revs(request, view, db_path, doc_id, params)
    rev = params.get("rev")
    latest = params.pop("latest", False)
    if latest and rev is not None and not view.is_leaf(doc_id, rev):
        # `latest`: the newest leaf below `rev`, asked for only once `rev` is known to exist.
        if (doc_id, rev) in await missing_revs(request, view, db_path, {doc_id: [rev]}):
            raise not_found()
        params["latest"] = True
    doc = await couch_docs(request, db_path).doc(doc_id, query.encode(params))
    if doc is None or not view.servable(doc):
        raise not_found()
    await leaves.filter_conflicts(request, view, db_path, [doc])
    headers = {"ETag": f'"{doc["_rev"]}"'} if isinstance(doc.get("_rev"), str) else None
    return json_response(doc, headers=headers)


async def open_revs(
    request: web.Request, view: UserView, db_path: str, doc_id: str, params: dict[str, Any]
) -> web.StreamResponse:
    revs = params["open_revs"]
    missing: set[tuple[str, str]] = set()
    if isinstance(revs, list) and revs:
        missing = await missing_revs(request, view, db_path, {doc_id: revs})
    asked = revs if revs == "all" else [r for r in revs if (doc_id, r) not in missing]
    rows: list[Any] = []
    if asked:
        rows = await couch_docs(request, db_path).doc(doc_id, query.encode({**params, "open_revs": asked}))
        if rows is None:
            raise not_found()
    answer: list[Any] = []
    hidden = False
    for row in rows:
        doc = row.get("ok") if isinstance(row, dict) else None
        if isinstance(doc, dict) and not view.servable(doc):
            # A leaf the user may not see is named only if they asked for it by name (with
            # `latest`, CouchDB answers a leaf below the one asked: that one is not named).
            if revs != "all" and doc.get("_rev") in asked:
                answer.append({"missing": doc["_rev"]})
            else:
                hidden = True
        else:
            answer.append(row)
    if hidden and isinstance(revs, list):
        # An asked revision with no row left is missing for the user; one that a row served
        # descends from is answered by it (`latest`: a "missing" row beside it would tell
        # that a leaf the user may not see stands below it too).
        served = [r["ok"] for r in answer if isinstance(r, dict) and isinstance(r.get("ok"), dict)]
        named = {r.get("missing") for r in answer if isinstance(r, dict)} | {d.get("_rev") for d in served}
        answer += [{"missing": r} for r in asked if r not in named and not any(_below(d, r) for d in served)]
    answer += [{"missing": r} for r in revs if isinstance(revs, list) and (doc_id, r) in missing]
    if "multipart/mixed" in request.headers.get("Accept", ""):
        return multipart_mixed(answer)
    return json_response(answer)


def _below(doc: dict[str, Any], rev: str) -> bool:
    """Whether `rev` is in the history of `doc` (without `_revisions`, taken as yes: a
    "missing" row is then left out rather than risk naming a hidden leaf)."""
    return not isinstance(doc.get("_revisions"), dict) or rev in history(doc)


def multipart_mixed(rows: list[Any]) -> web.Response:
    """CouchDB's multipart answer to `open_revs`: one JSON part per revision, a missing one
    marked `error="true"`. Attachments, when asked for, travel inline in the JSON parts."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}".encode()]
    for row in rows:
        if isinstance(row, dict) and "ok" in row:
            head, body = b"Content-Type: application/json", dumps(row["ok"])
        else:
            head, body = b'Content-Type: application/json; error="true"', dumps(row)
        parts.append(b"\r\n" + head + b"\r\n\r\n" + body + f"\r\n--{boundary}".encode())
    parts.append(b"--")
    return web.Response(
        body=b"".join(parts), headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    )
