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
from proxy.couch.client import JsonResult, quote_id
from proxy.errors import NotFound, UpstreamError, dumps, json_response
from proxy.keys import COUCH
from proxy.offline import leaves, query
from proxy.offline.view import UserView

MISSING = "missing"
REV = query.REV


def not_found() -> NotFound:
    return NotFound(MISSING)


def service(request: web.Request) -> dict[str, str]:
    return {"Authorization": request.app[COUCH].service_auth}


def failed(result: JsonResult) -> UpstreamError:
    """An upstream read a decision needed did not answer as it should: refuse (fail closed)."""
    return UpstreamError(f"CouchDB answered {result.status} to a read couchgate needed")


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
    if not result.ok or not isinstance(result.body, dict):
        raise failed(result)
    pairs: set[tuple[str, str]] = set()
    for doc_id, entry in result.body.items():
        missing = entry.get("missing") if isinstance(entry, dict) else None
        if isinstance(missing, list):
            pairs.update((doc_id, rev) for rev in missing if isinstance(rev, str))
    return pairs


async def get_doc(request: web.Request, view: UserView, path: CouchPath, db_path: str) -> web.StreamResponse:
    doc_id = path.doc_id or ""
    params = query.parse(request.query, query.DOC)
    if not await view.readable_now([doc_id]):
        raise not_found()
    if "open_revs" in params:
        return await open_revs(request, view, db_path, doc_id, params)
    rev = params.get("rev")
    latest = params.pop("latest", False)
    couch = request.app[COUCH]
    target = f"{db_path}/{quote_id(doc_id)}"
    if latest and rev is not None and not view.is_leaf(doc_id, rev):
        # `latest`: the newest leaf below `rev`, asked for only once `rev` is known to exist.
        if (doc_id, rev) in await missing_revs(request, view, db_path, {doc_id: [rev]}):
            raise not_found()
        params["latest"] = True
    result = await couch.json("GET", target, params=query.encode(params))
    if result.status == 404:
        raise not_found()
    if not result.ok or not isinstance(result.body, dict):
        if 400 <= result.status < 500:
            return json_response(result.body, status=result.status)
        raise failed(result)
    if not view.servable(result.body):
        raise not_found()
    await leaves.filter_conflicts(request, view, db_path, [result.body])
    headers = {"ETag": f'"{result.body["_rev"]}"'} if isinstance(result.body.get("_rev"), str) else None
    return json_response(result.body, headers=headers)


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
        result = await request.app[COUCH].json(
            "GET", f"{db_path}/{quote_id(doc_id)}", params=query.encode({**params, "open_revs": asked})
        )
        if not result.ok or not isinstance(result.body, list):
            if result.status == 404:
                raise not_found()
            raise failed(result)
        rows = result.body
    answer: list[Any] = []
    for row in rows:
        doc = row.get("ok") if isinstance(row, dict) else None
        if isinstance(doc, dict) and not view.servable(doc):
            if revs != "all":  # a leaf not asked for by name is not named at all
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
            head, body = b"Content-Type: application/json", dumps(row["ok"])
        else:
            head, body = b'Content-Type: application/json; error="true"', dumps(row)
        parts.append(b"\r\n" + head + b"\r\n\r\n" + body + f"\r\n--{boundary}".encode())
    parts.append(b"--")
    return web.Response(
        body=b"".join(parts), headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    )
