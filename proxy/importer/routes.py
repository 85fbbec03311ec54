"""`POST /{db}/_couchgate/import` and `POST /import` (the default database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from proxy.access.config import UserCtx, is_offline
from proxy.access.paths import CouchPath
from proxy.audit.capture import record
from proxy.errors import BadRequest, Forbidden, Unauthorized
from proxy.importer.engine import Importer, Plan
from proxy.importer.source import is_ndjson, items
from proxy.keys import COUCH, INDEX, PRINCIPAL, SETTINGS
from proxy.logs import stamp_request_id
from proxy.passthrough import credentials_for

MODES = ("skip", "overwrite", "keep_both")
MAX_DOC_BYTES = 8 * 1024 * 1024  # CouchDB's default max_document_size


async def import_default(request: web.Request) -> web.StreamResponse:
    """Import into the default database."""
    return await run_import(request, request.app[SETTINGS].db)


async def import_db(request: web.Request) -> web.StreamResponse:
    """Import into the named database."""
    return await run_import(request, request.match_info["db"])


async def plan_for(request: web.Request, db: str) -> Plan:
    principal = request[PRINCIPAL]
    if not principal.authenticated:
        raise Unauthorized("You are not authorized to access this resource.")
    mode = request.query.get("on_conflict", "skip")
    if mode not in MODES:
        raise BadRequest(f"on_conflict must be one of {', '.join(MODES)}")
    db_path = "/" + quote(db, safe="")
    user: UserCtx | None = None
    sync = request.app[INDEX]
    if principal.name is not None and not principal.is_admin:
        candidate = UserCtx(principal.name, principal.roles, principal.facility_ids, principal.contact_id)
        if is_offline(candidate, await sync.current_settings()):
            if db != sync.db:
                raise Forbidden("Offline users may only import into their own database.")
            user = candidate
    couch = request.app[COUCH]
    if user is not None or principal.is_admin:
        credentials = {"Authorization": couch.service_auth}
    else:
        # Online users write with their own authority: CouchDB's _security applies.
        credentials = await credentials_for(request, principal, CouchPath((db, "_bulk_docs")))
    return Plan(
        db_path=db_path,
        mode=mode,  # type: ignore[arg-type]
        dry_run=request.query.get("dry_run") == "true",
        user=user,
        credentials=credentials,
        is_admin=principal.is_admin,
        max_doc_bytes=MAX_DOC_BYTES,
    )


async def run_import(request: web.Request, db: str) -> web.StreamResponse:
    plan = await plan_for(request, db)
    stream_ndjson = is_ndjson(request) or "application/x-ndjson" in request.headers.get("Accept", "")
    source = items(request, request.app[SETTINGS].max_json_bytes)
    results = Importer(request, request.app[COUCH], plan).run(source)
    first = await _first(results)  # a body that is not JSON fails here, before any answer
    response = web.StreamResponse(status=200)
    response.content_type = "application/x-ndjson" if stream_ndjson else "application/json"
    response.enable_chunked_encoding()
    stamp_request_id(request, response)
    await response.prepare(request)
    if stream_ndjson:
        async for row in _chain(first, results):
            await response.write(orjson.dumps(row) + b"\n")
        await response.write(orjson.dumps({"summary": plan.summary, "dry_run": plan.dry_run}) + b"\n")
    else:
        await response.write(b'{"results":[')
        separator = b""
        async for row in _chain(first, results):
            await response.write(separator + orjson.dumps(row))
            separator = b","
        await response.write(
            b'],"summary":' + orjson.dumps(plan.summary) + b',"dry_run":' + orjson.dumps(plan.dry_run) + b"}"
        )
    await response.write_eof()
    if not plan.dry_run:
        record(
            request,
            "import",
            "written" if _clean(plan.summary) else "invalid",
            db=db,
            details={"summary": plan.summary, "on_conflict": plan.mode},
        )
    return response


def _clean(summary: dict[str, int]) -> bool:
    return not any(summary.get(s) for s in ("forbidden", "invalid"))


async def _first(results: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await results.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(
    first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    if first is not None:
        yield first
        async for row in rest:
            yield row
