"""The catch-all route: who is asking decides how a CouchDB path is served.

1. anonymous callers reach only `GET /` and `/_session`;
2. offline users (DESIGN.md 1) are served by `proxy.offline` with the rules applied;
3. everyone else is forwarded to CouchDB (`proxy.passthrough`), whose `_security` applies.
"""

from __future__ import annotations

from aiohttp import web

from proxy.access.config import UserCtx, is_offline
from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.auth.authenticator import CHALLENGE
from proxy.auth.principal import Principal
from proxy.errors import Unauthorized
from proxy.keys import INDEX, PRINCIPAL, SETTINGS
from proxy.offline.routes import serve_offline
from proxy.params import read_body
from proxy.passthrough import credentials_for, forward, parse_path


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
    if not principal.authenticated:
        if not is_public(request.method, path):
            raise Unauthorized("You are not authorized to access this resource.", headers=CHALLENGE)
    elif not is_public(request.method, path) and await offline(request, principal):
        return await serve_offline(request, path, principal)
    credentials = await credentials_for(request, principal, path)
    kind = capture.write_kind(request.method, path)
    if kind is None:
        return await forward(request, path, credentials)
    # A write: recorded in the audit log with CouchDB's answer. JSON bodies are read (they
    # are bounded) so each doc of a `_bulk_docs` gets its entry; attachments stay streamed.
    body = None
    declared = request.content_length
    bounded = declared is not None and declared <= request.app[SETTINGS].max_json_bytes
    if kind != "attachment" and request.content_type != "multipart/related" and bounded:
        body = await read_body(request, request.app[SETTINGS].max_json_bytes)
    # Larger or unsized bodies stream through untouched; their entries then come from
    # CouchDB's answer alone (ids and revs, without the doc types).

    def answered(status: int, raw: bytes) -> None:
        capture.record_write(request, path, kind, status, body, raw)

    return await forward(request, path, credentials, body=body, on_answer=answered)
