"""Requests couchgate does not forward as sent, for every caller it forwards raw (online
users, token callers, admins): those that would take the backend down for everyone, and
DELETEs whose meaning a backend could get wrong. Offline users never reach a raw forward
(`proxy.offline` answers them).

Refused or answered here on every backend (the answers are CouchDB's own, or a 400 where
CouchDB would crash into a 500):
- any reach for couchgate's own `_local` docs (offline users' checkpoints and removals
  ledgers), and `_local_docs`, which would list them: 403 for all but server admins; by
  path, by `COPY`'s destination, and by a body that names one (`_bulk_get`, `_all_docs`
  keys here; `_bulk_docs` and `POST /{db}` in `proxy.forward.serve`, which reads them);
- `PUT`/`DELETE /{db}` by anyone but a server admin: 401 `You are not a server admin.`;
- `_changes` filters of the wrong form (`filter=x`, `filter=_unknown`, `filter=_view`
  without `view=ddoc/view`), repeated `filter`/`view`;
- `_revs_diff` whose body is not an object of arrays of revision strings;
- `DELETE` of a doc or attachment: the revision the client named (`rev`, or `If-Match`) is
  the one sent upstream; naming none is CouchDB's 409 (404 for a missing doc), naming two
  that differ is CouchDB's 400.

On a backend that is not Apache CouchDB (`proxy.couch.backend_kind`), also (these crash
a stock pouchdb-server process):
- `_changes` with `filter=_selector` or `filter=_design` (pouchdb-server has neither): 400;
  a filter naming a design doc, filter or view that does not exist: CouchDB's 404;
- `open_revs=[...]` with `latest` naming a revision the doc does not have: answered here
  (the missing ones as `{"missing": rev}`, the others read without them);
- `_bulk_get` with `latest` asking for missing revisions: likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.audit.recorder import record
from proxy.auth.principal import Principal
from proxy.couch.client import JsonResult, quote_id
from proxy.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized, json_response
from proxy.keys import BACKEND_KIND, COUCH, SETTINGS
from proxy.params import read_body

NOT_SERVER_ADMIN = "You are not a server admin."
BUILTIN_FILTERS = {"_doc_ids", "_view", "_design", "_selector"}
COUCHDB_ONLY_FILTERS = {"_design", "_selector"}
REVS_DIFF_SHAPE = "_revs_diff takes an object of doc ids, each with an array of revision strings"


class _Answered(Exception):
    """The backend's own answer to a question the guard asked for the caller (a 401, 403,
    ...): the caller gets it, as if the request had been forwarded."""

    def __init__(self, answer: web.Response) -> None:
        super().__init__("answered")
        self.answer = answer


@dataclass(frozen=True)
class Screened:
    """What to forward: this request (a DELETE may carry its revision in the query now),
    with this body when the guard had to read it; or `answer`, given here instead."""

    request: web.Request
    body: bytes | None = None
    answer: web.StreamResponse | None = None


async def screen(
    request: web.Request, path: CouchPath, principal: Principal, credentials: Mapping[str, str]
) -> Screened:
    """Refuse (raise), answer, or pass on a request about to be forwarded raw with these
    upstream credentials (the backend is asked only what the caller may ask)."""
    try:
        return await _screen(request, path, principal, credentials)
    except _Answered as answered:
        return Screened(request, answer=answered.answer)


async def _screen(
    request: web.Request, path: CouchPath, principal: Principal, credentials: Mapping[str, str]
) -> Screened:
    method = request.method
    if len(path.segments) == 1 and path.db is not None and method in ("PUT", "DELETE"):
        if not principal.is_admin:
            action = "db_create" if method == "PUT" else "db_delete"
            record(request, action, "forbidden", db=path.db, reason=NOT_SERVER_ADMIN)
            raise Unauthorized(NOT_SERVER_ADMIN)
        return Screened(request)
    if path.is_server or len(path.segments) < 2:
        return Screened(request)
    if not principal.is_admin and _couchgates_own(path, request):
        raise Forbidden(OWN_REASON)
    kind = capture.write_kind(method, path)
    if method == "DELETE" and kind in ("doc", "attachment"):
        return await _delete(request, path, credentials)
    second = path.segments[1]
    raw = None
    if not principal.is_admin and second in ("_bulk_get", "_all_docs"):  # ids named in a body or query
        if method == "POST":
            raw = await read_body(request, request.app[SETTINGS].max_json_bytes)
            refuse_own_local(raw)
        for name in ("keys", "key", "startkey", "start_key"):
            for value in request.query.getall(name, []):
                refuse_own_local(value.encode())
    if second == "_changes" and method in ("GET", "HEAD", "POST"):
        await _changes_filter(request, path, credentials)
    elif second == "_revs_diff" and method == "POST":
        return Screened(request, body=await _revs_diff_body(request))
    elif second == "_bulk_get" and method == "POST" and _latest(request):
        return await _bulk_get(request, path, credentials, raw)
    elif method == "GET" and path.doc_id is not None and not path.rest and _latest(request):
        return await _open_revs(request, path, credentials)
    return Screened(request, body=raw)


# `_local` docs couchgate keeps in the main database for offline users (their replication
# checkpoints, their removals ledgers): no other caller reads, writes or lists them.
OWN_LOCAL = "_local/couchgate"
OWN_REASON = "This document is couchgate's own."


def names_own_local(body: object) -> bool:
    """Whether a request body (parsed JSON, or the strings of a query) names one of
    couchgate's own `_local` docs: as a doc's `_id` or `id`, a key, or an element of a
    list, at any depth CouchDB reads ids from."""
    if isinstance(body, str):
        return body.startswith(OWN_LOCAL)
    if isinstance(body, list):
        return any(names_own_local(item) for item in body)
    if isinstance(body, dict):
        return any(
            names_own_local(body.get(key))
            for key in ("_id", "id", "docs", "keys", "key", "startkey", "start_key")
        )
    return False


def refuse_own_local(raw: bytes) -> None:
    """403 for a JSON body that names couchgate's own `_local` docs (one that is no JSON
    names nothing CouchDB would read either)."""
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return
    if names_own_local(body):
        raise Forbidden(OWN_REASON)


def _couchgates_own(path: CouchPath, request: web.Request) -> bool:
    if path.segments[1] == "_local_docs":
        return True  # it would list them (CouchDB 3 lets members list every _local doc)
    if (path.doc_id or "").startswith(OWN_LOCAL):
        return True
    destination = request.headers.get("Destination") if request.method == "COPY" else None
    return destination is not None and unquote(destination).lstrip("/").startswith(OWN_LOCAL)


async def _fragile(request: web.Request) -> bool:
    return not await request.app[BACKEND_KIND].is_couchdb()


def _latest(request: web.Request) -> bool:
    # pouchdb-server takes any value of `latest` for true (`latest=1`, `latest=TRUE`, ...).
    return "latest" in request.query


async def _read(request: web.Request, path: str, credentials: Mapping[str, str]) -> JsonResult:
    """A read as the caller (never as more than the caller may see)."""
    return await request.app[COUCH].json("GET", path, headers=credentials, use_service=False)


def _passed_on(result: JsonResult) -> web.Response:
    """CouchDB's (or the backend's) own answer, as it gave it."""
    body = result.body if result.body is not None else {"error": "unknown", "reason": "no answer"}
    return json_response(body, status=result.status)


# -- DELETE ------------------------------------------------------------------------------


async def _delete(request: web.Request, path: CouchPath, credentials: Mapping[str, str]) -> Screened:
    rev = request.query.get("rev")
    etag = (request.headers.get("If-Match") or "").strip()
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    if rev and etag and rev != etag:
        raise BadRequest("Document rev and etag have different values")
    doc_path = f"/{quote_id(path.db or '')}/{quote_id(path.doc_id or '')}"
    named = rev or etag
    if not named:
        # No revision named: CouchDB's answer, without asking the backend to delete anything.
        existing = await _read(request, doc_path, credentials)
        if existing.ok:
            raise Conflict("Document update conflict.")
        return Screened(request, answer=_passed_on(existing))
    if await _fragile(request):
        # pouchdb-server answers 404 for a revision that is not a leaf; CouchDB says 409.
        leaves = await _read(request, f"{doc_path}?open_revs=all", credentials)
        if leaves.ok and isinstance(leaves.body, list):
            revs = {
                row["ok"].get("_rev")
                for row in leaves.body
                if isinstance(row, dict) and isinstance(row.get("ok"), dict)
            }
            if revs and named not in revs:
                raise Conflict("Document update conflict.")
    if rev:
        return Screened(request)
    # Sent as `rev`: a backend that ignores If-Match must not delete whatever wins.
    return Screened(request.clone(rel_url=request.rel_url.update_query(rev=etag)))


# -- _changes filters -----------------------------------------------------------------------


def filter_problem(filters: list[str], views: list[str]) -> str | None:
    """Why CouchDB would refuse this `_changes` filter (or crash on it), or None. Pure."""
    if len(filters) > 1 or len(views) > 1:
        return "`filter` and `view` may each be given once"
    name = filters[0] if filters else ""
    if not name:
        return None
    if name.startswith("_"):
        if name not in BUILTIN_FILTERS:
            return "unknown builtin filter name"
        if name == "_view":
            if not views or not views[0]:
                return "`view` filter parameter is not provided."
            if not _two_parts(views[0]):
                return "`view` must be of the form `designname/viewname`"
        return None
    if not _two_parts(name):
        return "`filter` must be of the form `designname/filtername`"
    return None


def _two_parts(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts)


async def _changes_filter(request: web.Request, path: CouchPath, credentials: Mapping[str, str]) -> None:
    filters, views = request.query.getall("filter", []), request.query.getall("view", [])
    problem = filter_problem(filters, views)
    if problem is not None:
        raise BadRequest(problem)
    name = filters[0] if filters else ""
    if not name or name == "_doc_ids" or not await _fragile(request):
        return
    if name in COUCHDB_ONLY_FILTERS:
        raise BadRequest(f"filter={name} is not supported by this backend (Apache CouchDB supports it)")
    ddoc, function = (views[0] if name == "_view" else name).split("/")
    field = "views" if name == "_view" else "filters"
    design = await _read(request, f"/{quote_id(path.db or '')}/{quote_id('_design/' + ddoc)}", credentials)
    if not design.ok:
        if design.status == 404:
            raise NotFound("missing")
        raise _Answered(_passed_on(design))
    functions = design.body.get(field) if isinstance(design.body, dict) else None
    if not isinstance(functions, dict) or function not in functions:
        raise NotFound(f"missing json key: {function}")


# -- _revs_diff -------------------------------------------------------------------------------


def revs_diff_ok(body: object) -> bool:
    """`{"doc id": ["rev", ...], ...}`: anything else crashes pouchdb-server (a non-array
    value) or CouchDB's handler (a 500). Pure."""
    return isinstance(body, dict) and all(
        isinstance(revs, list) and all(isinstance(rev, str) for rev in revs) for revs in body.values()
    )


async def _revs_diff_body(request: web.Request) -> bytes:
    raw = await read_body(request, request.app[SETTINGS].max_json_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid UTF-8 JSON") from exc
    if not revs_diff_ok(body):
        raise BadRequest(REVS_DIFF_SHAPE)
    return raw


# -- latest=true with revisions the doc does not have --------------------------------------------


async def _missing(
    request: web.Request, db: str, wanted: dict[str, list[str]], credentials: Mapping[str, str]
) -> dict[str, set[str]]:
    """The revisions of `wanted` the backend does not have, asked as the caller."""
    result = await request.app[COUCH].json(
        "POST", f"/{quote_id(db)}/_revs_diff", body=wanted, headers=credentials, use_service=False
    )
    if not result.ok or not isinstance(result.body, dict):
        raise _Answered(_passed_on(result))
    missing: dict[str, set[str]] = {}
    for doc_id, row in result.body.items():
        revs = row.get("missing") if isinstance(row, dict) else None
        if isinstance(revs, list):
            missing[doc_id] = {rev for rev in revs if isinstance(rev, str)}
    return missing


def _query_with(request: web.Request, **replaced: str) -> str:
    pairs = [(k, v) for k, v in request.query.items() if k not in replaced]
    return urlencode([*pairs, *replaced.items()])


async def _open_revs(request: web.Request, path: CouchPath, credentials: Mapping[str, str]) -> Screened:
    raw = request.query.getall("open_revs", [])
    if not raw or raw == ["all"] or not await _fragile(request):
        return Screened(request)
    try:
        revs = orjson.loads(raw[0]) if len(raw) == 1 else None
    except orjson.JSONDecodeError:
        revs = None
    if not isinstance(revs, list) or not all(isinstance(rev, str) for rev in revs):
        raise BadRequest("open_revs must be `all` or a JSON array of revisions")
    db, doc_id = path.db or "", path.doc_id or ""
    missing = (await _missing(request, db, {doc_id: revs}, credentials)).get(doc_id, set())
    present = [rev for rev in revs if rev not in missing]
    if not missing:
        return Screened(request)
    rows: list[Any] = []
    if present:
        query = _query_with(request, open_revs=orjson.dumps(present).decode())
        result = await _read(request, f"{path.encoded()}?{query}", credentials)
        if not result.ok or not isinstance(result.body, list):
            return Screened(request, answer=_passed_on(result))
        rows = result.body
    rows += [{"missing": rev} for rev in revs if rev in missing]
    return Screened(request, answer=json_response(rows))


async def _bulk_get(
    request: web.Request, path: CouchPath, credentials: Mapping[str, str], raw: bytes | None
) -> Screened:
    if raw is None:
        raw = await read_body(request, request.app[SETTINGS].max_json_bytes)
    if not await _fragile(request):
        return Screened(request, body=raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid UTF-8 JSON") from exc
    docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(docs, list) or not all(isinstance(doc, dict) for doc in docs):
        raise BadRequest('_bulk_get takes {"docs": [{"id": ..., "rev": ...}, ...]}')
    wanted: dict[str, list[str]] = {}
    for doc in docs:
        if isinstance(doc.get("id"), str) and isinstance(doc.get("rev"), str):
            wanted.setdefault(doc["id"], []).append(doc["rev"])
    missing = await _missing(request, path.db or "", wanted, credentials) if wanted else {}

    def is_missing(doc: dict[str, Any]) -> bool:
        doc_id = doc.get("id")
        return isinstance(doc_id, str) and doc.get("rev") in missing.get(doc_id, set())

    if not any(is_missing(doc) for doc in docs):
        return Screened(request, body=raw)
    asked = [doc for doc in docs if not is_missing(doc)]
    answered: list[Any] = []
    if asked:
        result = await request.app[COUCH].json(
            "POST", f"{path.encoded()}?{_query_with(request)}", body={**body, "docs": asked},
            headers=credentials, use_service=False,
        )  # fmt: skip
        rows = result.body.get("results") if isinstance(result.body, dict) else None
        if not result.ok or not isinstance(rows, list):
            return Screened(request, answer=_passed_on(result))
        answered = rows
    # The backend's rows as it gave them (pouchdb-server merges rows of one id), then one
    # row for each missing revision, in CouchDB's shape.
    for doc in docs:
        if is_missing(doc):
            error = {"id": doc["id"], "rev": doc["rev"], "error": "not_found", "reason": "missing"}
            answered.append({"id": doc["id"], "docs": [{"error": error}]})
    return Screened(request, answer=json_response({"results": answered}))
