"""The catch-all route: who is asking decides how a CouchDB path is served.

1. anonymous callers reach only `GET /` and `/_session`;
2. offline users (DESIGN.md 1) are served by `proxy.offline` with the rules applied;
3. everyone else is forwarded to CouchDB (`proxy.passthrough`), whose `_security` applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from aiohttp import web

from proxy import guard
from proxy.access.config import UserCtx, is_offline
from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.auth.authenticator import CHALLENGE
from proxy.auth.principal import Principal
from proxy.errors import Unauthorized
from proxy.keys import INDEX, PRINCIPAL, SETTINGS
from proxy.offline.routes import serve_offline
from proxy.params import collect
from proxy.passthrough import CAPTURE_LIMIT, credentials_for, forward, limited_body, parse_path


def is_public(method: str, path: CouchPath) -> bool:
    """What anonymous callers may reach: the welcome document and CouchDB sessions."""
    if not path.segments:
        return method in {"GET", "HEAD"}
    return path.segments[0] == "_session"


async def offline(request: web.Request, principal: Principal) -> bool:
    if principal.is_admin or principal.name is None:
        return False
    sync = request.app[INDEX]
    settings = await sync.current_settings()
    user = UserCtx(principal.name, principal.roles, principal.facility_ids, principal.contact_id)
    return is_offline(user, settings)


async def couchdb_handler(request: web.Request) -> web.StreamResponse:
    """Any CouchDB path, for whoever couchgate lets through."""
    principal = request[PRINCIPAL]
    path = parse_path(request)
    if not principal.authenticated and not is_public(request.method, path):
        raise Unauthorized("You are not authorized to access this resource.", headers=CHALLENGE)
    kind = capture.write_kind(request.method, path)
    if kind is not None:
        await capture.admit(request)  # the audit log's backpressure (proxy/audit/log.py)
    # Offline users' `GET /` too: answered from couchgate's copy of CouchDB's welcome.
    to_offline = not path.segments or not is_public(request.method, path)
    if principal.authenticated and to_offline and await offline(request, principal):
        return await serve_offline(request, path, principal)
    credentials = await credentials_for(request, principal, path)
    # Requests that would harm the backend, or that a backend could misread (proxy.guard).
    screened = await guard.screen(request, path, principal, credentials)
    if screened.answer is not None:
        return screened.answer
    request = screened.request
    if kind is None:
        return await forward(request, path, credentials, body=screened.body)
    # A write: recorded in the audit log with CouchDB's answer. JSON bodies up to the JSON
    # limit are read, chunked ones too, so each doc of a `_bulk_docs` gets its entry; larger
    # ones and attachments stream through, and their entries say what could not be known.
    settings = request.app[SETTINGS]
    body: bytes | AsyncIterable[bytes] | None = None
    captured: bytes | None = None
    body_read = True
    json_body = kind in capture.JSON_BODY_KINDS and request.content_type != "multipart/related"
    if json_body and request.body_exists:
        declared = request.content_length
        if declared is None or declared <= settings.max_json_bytes:
            prefix, complete = await collect(request.content.iter_chunked(64 * 1024), settings.max_json_bytes)
            if complete:
                captured = prefix
                body = prefix if len(prefix) <= CAPTURE_LIMIT else in_slices(prefix)
            else:
                body, body_read = rest_of_body(request, prefix, settings.max_body_bytes), False
        else:
            body_read = False

    def answered(status: int, raw: bytes) -> None:
        capture.record_write(request, path, kind, status, captured, raw, body_read=body_read)

    # A `_bulk_docs` answer has a row per doc: read as much of it as a JSON body may hold.
    limit = settings.max_json_bytes if kind == "bulk" else CAPTURE_LIMIT
    return await forward(request, path, credentials, body=body, on_answer=answered, capture_limit=limit)


async def in_slices(raw: bytes) -> AsyncIterator[bytes]:
    """Large bytes sent a slice at a time (aiohttp warns that one big write blocks the loop)."""
    view = memoryview(raw)
    for start in range(0, len(raw), 64 * 1024):
        yield bytes(view[start : start + 64 * 1024])


async def rest_of_body(request: web.Request, prefix: bytes, limit: int) -> AsyncIterator[bytes]:
    """`prefix`, then the rest of the request body as it arrives (refused past `limit`)."""
    async for piece in in_slices(prefix):
        yield piece
    async for chunk in limited_body(request, limit - len(prefix)):
        yield chunk
