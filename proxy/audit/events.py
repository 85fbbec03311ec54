"""Security events in the audit log: failed authentication and requests the access rules
deny (recorded here once per request), logins and token issues (recorded by their routes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.audit.capture import record
from proxy.auth.authenticator import AuthFailed
from proxy.errors import Forbidden

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AuthFailed as exc:
        record(request, "authenticate", "failure", reason=exc.reason)
        raise
    except Forbidden as exc:
        record(request, "request", "denied", reason=exc.reason)
        raise
