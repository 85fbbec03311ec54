"""The catch-all route: who is asking decides how a CouchDB path is served.

1. anonymous callers reach only `GET /` and `/_session`;
2. offline users (docs/design.md, 1) are served by `proxy.offline` with the rules applied;
3. everyone else is forwarded to CouchDB (`proxy.forward`), whose `_security` applies.
"""

from __future__ import annotations

from aiohttp import web

from proxy.access.couch_security import DB_NAME, ILLEGAL_DB_REASON, SYSTEM_DBS
from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.audit.recorder import Recorder
from proxy.auth.authenticator import CHALLENGE
from proxy.auth.caller import Caller
from proxy.couch.client import fail_fast
from proxy.errors import IllegalDatabaseName, Unauthorized, UpstreamTimeout, UpstreamUnavailable
from proxy.forward.relay import parse_path
from proxy.forward.serve import serve_forwarded
from proxy.keys import CALLER
from proxy.methods import refuse_wrong_method
from proxy.offline.routes import serve_offline


def is_public(method: str, path: CouchPath) -> bool:
    """What anonymous callers may reach: the welcome document and CouchDB sessions."""
    if not path.segments:
        return method in {"GET", "HEAD"}
    return path.segments[0] == "_session"


async def serve_offline_fast(request: web.Request, path: CouchPath, caller: Caller) -> web.StreamResponse:
    """An offline user's request: a phone is waiting, so a CouchDB that stops answering is
    503 after COUCHGATE_FIRST_BYTE_TIMEOUT (PouchDB retries it), not a wait of minutes."""
    try:
        with fail_fast():
            return await serve_offline(request, path, caller)
    except UpstreamTimeout as exc:
        raise UpstreamUnavailable(exc.reason, headers={"Retry-After": "2"}) from exc


async def couchdb_handler(request: web.Request) -> web.StreamResponse:
    """Any CouchDB path, for whoever couchgate lets through."""
    await refuse_wrong_method(request)
    caller = request[CALLER]
    principal = caller.principal
    path = parse_path(request)
    if not path.is_server and path.db not in SYSTEM_DBS and not DB_NAME.match(path.db or ""):
        # CouchDB's own answer; the embedded backend breaks for good on some such names.
        raise IllegalDatabaseName(ILLEGAL_DB_REASON.format(path.db))
    if not principal.authenticated and not is_public(request.method, path):
        raise Unauthorized("You are not authorized to access this resource.", headers=CHALLENGE)
    kind = capture.write_kind(request.method, path)
    if kind is not None:
        await Recorder.of(request).admit()  # the audit log's backpressure (proxy/audit/log.py)
    # Offline users' `GET /` too: answered from couchgate's copy of CouchDB's welcome.
    to_offline = not path.segments or not is_public(request.method, path)
    if principal.authenticated and to_offline and caller.offline:
        return await serve_offline_fast(request, path, caller)
    return await serve_forwarded(request, path, principal, kind)
