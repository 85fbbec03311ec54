"""`POST /{db}/_couchgate/import` and `POST /import` (the default database).

Who may import where is settled before any doc is looked at: server admins anywhere;
offline users into couchgate's own database only; online users where CouchDB lets them
read (checked with their own credentials: a database they cannot read answers CouchDB's
401/403, a missing one 404), never into system databases (`_users`, `_replicator`, ...).

Once the answer has started (200, streamed), nothing can change its status: a failure
after that point is written into the body (per doc as `error` rows, or a final
`{"error", "reason"}` line when the body itself could not be read on) and the answer
always ends with its summary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from proxy.access.config import UserCtx
from proxy.access.paths import CouchPath
from proxy.audit.api import Outcome
from proxy.audit.recorder import Recorder, record
from proxy.errors import BadRequest, CouchgateError, Forbidden, Refused, UpstreamError
from proxy.forward.acting import credentials_for
from proxy.importer.pipeline import Importer, Plan
from proxy.importer.source import is_ndjson, items
from proxy.keys import CALLER, COUCH, INDEX, SETTINGS
from proxy.logs import stamp_request_id
from proxy.params import flag

log = logging.getLogger("couchgate.import")

MODES = ("skip", "overwrite", "keep_both")


async def import_default(request: web.Request) -> web.StreamResponse:
    """Import into the default database."""
    return await run_import(request, request.app[SETTINGS].db)


async def import_db(request: web.Request) -> web.StreamResponse:
    """Import into the named database."""
    return await run_import(request, request.match_info["db"])


async def plan_for(request: web.Request, db: str) -> Plan:
    caller = request[CALLER]
    principal = caller.principal
    mode = request.query.get("on_conflict", "skip")
    if mode not in MODES:
        raise BadRequest(f"on_conflict must be one of {', '.join(MODES)}")
    if db.startswith("_") and not principal.is_admin:
        raise Forbidden("Only server admins may import into system databases.")
    db_path = "/" + quote(db, safe="")
    user: UserCtx | None = None
    if caller.offline:
        if db != request.app[INDEX].db:
            raise Forbidden("Offline users may only import into their own database.")
        user = caller.user
    couch = request.app[COUCH]
    read_as: dict[str, str] | None = None
    if user is not None or principal.is_admin:
        credentials = {"Authorization": couch.service_auth}
    else:
        # Online users read and write with their own authority: CouchDB's _security applies.
        # (A token caller's check of a `_bulk_docs` body, no design docs, is the import's own:
        # only server admins import design docs, `proxy.importer.docs`.)
        credentials = (await credentials_for(request, principal, CouchPath((db, "_bulk_docs")))).credentials
        read_as = credentials
    if user is None:
        answer = await couch.json("GET", db_path, headers=read_as, use_service=read_as is None)
        if answer.status >= 500:
            raise UpstreamError("CouchDB could not answer for the database")
        if not answer.ok:
            raise Refused(answer.status, answer.body)
    settings = request.app[SETTINGS]
    return Plan(
        db_path=db_path,
        mode=mode,  # type: ignore[arg-type]
        dry_run=flag(request.query, "dry_run", default=False),
        user=user,
        credentials=credentials,
        is_admin=principal.is_admin,
        max_doc_bytes=settings.max_import_doc_bytes,
        # Attachments are not part of max_document_size in CouchDB; they are bounded by the
        # request size (and, before that, by the import's JSON body or NDJSON line limit).
        max_attachment_bytes=settings.max_body_bytes,
        read_as=read_as,
    )


async def run_import(request: web.Request, db: str) -> web.StreamResponse:
    plan = await plan_for(request, db)
    stream_ndjson = is_ndjson(request) or "application/x-ndjson" in request.headers.get("Accept", "")
    source = items(request, request.app[SETTINGS].max_json_bytes, request.app[SETTINGS].max_import_line_bytes)
    chunks = Importer(request, request.app[COUCH], plan, Recorder.of(request)).run(source)
    started = complete = False
    try:
        first = await _first(chunks)  # a body that is not JSON fails here, before any answer
        response = web.StreamResponse(status=200)
        response.content_type = "application/x-ndjson" if stream_ndjson else "application/json"
        response.enable_chunked_encoding()
        stamp_request_id(request, response)
        await response.prepare(request)
        started = True
        failure: dict[str, str] | None = None
        separator = b""
        if not stream_ndjson:
            await response.write(b'{"results":[')
        try:
            async for rows in _chain(first, chunks):
                if stream_ndjson:
                    await response.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
                else:
                    await response.write(separator + b",".join(orjson.dumps(row) for row in rows))
                    separator = b","
        except (ConnectionResetError, asyncio.CancelledError):
            raise  # the client has gone: nothing left to answer
        except Exception as exc:  # the answer has begun: say it in the body, then end it cleanly
            failure = _failure(exc)
        tail = {"summary": plan.summary, "dry_run": plan.dry_run}
        if stream_ndjson:
            end = (orjson.dumps(failure) + b"\n" if failure else b"") + orjson.dumps(tail) + b"\n"
        else:
            end = b"]," + orjson.dumps({**(failure or {}), **tail})[1:]  # the rest of the object
        await response.write(end)
        await response.write_eof()
        complete = failure is None
        return response
    finally:
        await chunks.aclose()  # chunks in flight finish (and are audited) even if the client left
        if not plan.dry_run and (started or plan.summary):
            record(
                request,
                "import",
                _summary_outcome(plan.summary, complete),
                db=db,
                details={"summary": plan.summary, "on_conflict": plan.mode, "complete": complete},
            )


def _failure(exc: Exception) -> dict[str, str]:
    if isinstance(exc, CouchgateError):
        return {"error": exc.error, "reason": exc.reason}
    log.error("import failed after the answer began", exc_info=exc)
    return {"error": "internal_server_error", "reason": "couchgate could not read the rest of the import"}


def _summary_outcome(summary: dict[str, int], complete: bool) -> Outcome:
    if not complete or summary.get("error"):
        return "error"
    return "invalid" if any(summary.get(s) for s in ("forbidden", "invalid")) else "written"


async def _first(chunks: AsyncIterator[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(
    first: list[dict[str, Any]] | None, rest: AsyncIterator[list[dict[str, Any]]]
) -> AsyncIterator[list[dict[str, Any]]]:
    if first is not None:
        yield first
        async for rows in rest:
            yield rows
