"""One doc for offline users: `GET /{db}/{id}`, with `rev=` and `open_revs=`.

The index judges a doc by its current winner; a past or conflicting revision is returned
only if that revision is readable itself (`proxy.access.decide.revision_readable`), else
it looks missing. pouchdb-server dies on `latest=true` for a rev it lacks, so a rev is
known to exist before `latest` is ever sent with it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.couch.client import quote_id
from proxy.errors import BadRequest, NotFound, json_response
from proxy.keys import COUCH
from proxy.offline.view import UserView
from proxy.params import true
from proxy.passthrough import forward

MISSING = "missing"
REV = re.compile(r"^[0-9]{1,10}-[0-9a-zA-Z]{1,64}$")


def not_found() -> NotFound:
    return NotFound(MISSING)


def service(request: web.Request) -> dict[str, str]:
    return {"Authorization": request.app[COUCH].service_auth}


async def missing_revs(
    request: web.Request, view: UserView, db_path: str, wanted: Mapping[str, list[str]]
) -> set[tuple[str, str]]:
    """The (id, rev) pairs CouchDB does not have. Revs the index knows as leaves exist, so
    only the others are asked about (one `_revs_diff` for all of them)."""
    unknown = {doc_id: [r for r in revs if not view.is_leaf(doc_id, r)] for doc_id, revs in wanted.items()}
    ask = {doc_id: revs for doc_id, revs in unknown.items() if revs}
    if not ask:
        return set()
    result = await request.app[COUCH].json("POST", f"{db_path}/_revs_diff", body=ask)
    body = result.body if result.ok and isinstance(result.body, dict) else {}
    pairs: set[tuple[str, str]] = set()
    for doc_id, entry in body.items():
        missing = entry.get("missing") if isinstance(entry, dict) else None
        if isinstance(missing, list):
            pairs.update((doc_id, rev) for rev in missing if isinstance(rev, str))
    return pairs


async def get_doc(request: web.Request, view: UserView, path: CouchPath, db_path: str) -> web.StreamResponse:
    doc_id = path.doc_id or ""
    if not await view.readable_now([doc_id]):
        raise not_found()
    query = request.query
    if "open_revs" in query:
        return await open_revs(request, view, db_path, doc_id, parse_open_revs(query["open_revs"]))
    rev = query.get("rev")
    if rev is None:
        return await forward(request, path, service(request))  # the winner, judged by the index
    if not REV.match(rev):
        raise BadRequest("Invalid rev format")
    return await doc_at_rev(request, view, path, db_path, doc_id, rev)


async def doc_at_rev(
    request: web.Request, view: UserView, path: CouchPath, db_path: str, doc_id: str, rev: str
) -> web.StreamResponse:
    if rev == view.winner_rev(doc_id):
        # The index judged this very revision, and it exists, so `latest` is safe too.
        return await forward(request, path, service(request))
    couch = request.app[COUCH]
    target = f"{db_path}/{quote_id(doc_id)}"
    checked = await couch.json("GET", target, params={"rev": rev})  # never `latest` for a rev unknown yet
    if checked.status == 404:
        raise not_found()
    if not checked.ok or not isinstance(checked.body, dict):
        return json_response(checked.body, status=checked.status)
    if not true(request.query.get("latest")):
        if not view.revision_readable(checked.body):
            raise not_found()
        return await forward(request, path, service(request))  # a revision never changes
    # `latest`: the answer is the newest leaf below `rev`; that is the revision to judge.
    result = await couch.json("GET", target, params=dict(request.query))
    if result.ok and isinstance(result.body, dict) and not view.revision_readable(result.body):
        raise not_found()
    return json_response(result.body, status=result.status)


def parse_open_revs(value: str) -> list[str] | str:
    if value == "all":
        return "all"
    try:
        revs = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("open_revs must be `all` or a JSON array of revisions") from exc
    if not isinstance(revs, list) or not all(isinstance(r, str) and REV.match(r) for r in revs):
        raise BadRequest("open_revs must be `all` or a JSON array of revisions")
    return revs


async def open_revs(
    request: web.Request, view: UserView, db_path: str, doc_id: str, revs: list[str] | str
) -> web.StreamResponse:
    missing: set[tuple[str, str]] = set()
    if isinstance(revs, list) and revs:
        missing = await missing_revs(request, view, db_path, {doc_id: revs})
    asked = revs if revs == "all" else [r for r in revs if (doc_id, r) not in missing]
    rows: list[Any] = []
    if asked:
        params = {k: v for k, v in request.query.items() if k != "open_revs"}
        params["open_revs"] = asked if isinstance(asked, str) else orjson.dumps(asked).decode()
        result = await request.app[COUCH].json("GET", f"{db_path}/{quote_id(doc_id)}", params=params)
        if not result.ok:
            return json_response(result.body, status=result.status)
        rows = result.body if isinstance(result.body, list) else []
    answer: list[Any] = []
    for row in rows:
        doc = row.get("ok") if isinstance(row, dict) else None
        if isinstance(doc, dict) and not view.revision_readable(doc):
            answer.append({"missing": doc.get("_rev")})
        else:
            answer.append(row)
    answer += [{"missing": r} for r in revs if isinstance(revs, list) and (doc_id, r) in missing]
    if "multipart/mixed" in request.headers.get("Accept", ""):
        return multipart_mixed(answer)
    return json_response(answer)


def multipart_mixed(rows: list[Any]) -> web.Response:
    """CouchDB's multipart answer to `open_revs`: one JSON part per revision, a missing one
    marked `error="true"`. Attachments, when asked for, travel inline in the JSON parts."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}".encode()]
    for row in rows:
        if isinstance(row, dict) and "ok" in row:
            head, body = b"Content-Type: application/json", orjson.dumps(row["ok"])
        else:
            head, body = b'Content-Type: application/json; error="true"', orjson.dumps(row)
        parts.append(b"\r\n" + head + b"\r\n\r\n" + body + f"\r\n--{boundary}".encode())
    parts.append(b"--")
    return web.Response(
        body=b"".join(parts), headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    )
