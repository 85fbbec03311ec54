"""The request pipeline, outermost first (see `create_app`): request id, errors, CORS, auth,
and the audit of security events (failed authentication, requests the rules deny)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.access.paths import BadPath, CouchPath
from proxy.audit.recorder import record
from proxy.auth import caller
from proxy.auth.authenticator import CHALLENGE, AuthFailed
from proxy.auth.throttle import LoginThrottled
from proxy.clients import client_address
from proxy.errors import Forbidden, Unauthorized
from proxy.keys import AUTHENTICATOR, CALLER, INDEX, SETTINGS
from proxy.logs import USER_NAME_KEY

CORS_ORIGIN = web.RequestKey("cors_origin", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, COPY, OPTIONS"
ALLOWED_HEADERS = (
    "Accept, Authorization, Content-Type, Origin, Referer, X-Requested-With, X-Request-ID, If-Match"
)
EXPOSED_HEADERS = "Cache-Control, Content-Type, Server, ETag, X-Couch-Request-ID, X-Request-ID, Location"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    origins = request.app[SETTINGS].cors_origins
    if origin is None or not origins:
        return None
    return origin if ("*" in origins or origin in origins) else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = _allowed_origin(request)
    if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    if origin is not None:
        # Headers must be on the response before a streamed body starts.
        request[CORS_ORIGIN] = origin
    return await handler(request)


async def on_prepare_cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.get(CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")


# Routes that answer without looking at credentials (probes must not depend on CouchDB auth;
# the console's static files hold no data).
UNAUTHENTICATED_ROUTES = {"health", "ready", "console", "console_asset"}
# Routes anonymous callers may reach: logging in, and CouchDB's welcome (`GET /`, below).
ANONYMOUS_ROUTES = {"health", "ready", "issue_token", "session"}


def anonymous_allowed(request: web.Request, route_name: str | None) -> bool:
    if route_name in ANONYMOUS_ROUTES:
        return True
    if route_name == "metrics":
        return request.app[SETTINGS].metrics_public
    return welcome(request, route_name)


def welcome(request: web.Request, route_name: str | None) -> bool:
    """CouchDB's welcome (`GET /`): public, and it needs nothing of its caller but that the
    credentials they bring (if any) are right."""
    if route_name == "couchdb_proxy" and request.method in {"GET", "HEAD"}:
        try:
            return not CouchPath.parse(request.rel_url.raw_path).segments
        except BadPath:
            return False
    return False


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    name = route.name if route is not None else None
    if name in UNAUTHENTICATED_ROUTES:
        request[CALLER] = caller.anonymous(request.app[INDEX].settings)
        return await handler(request)
    try:
        principal = await request.app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization"),
            request.headers.get("Cookie"),
            client_address(request),
            user_docs=not welcome(request, name),
        )
    except LoginThrottled as exc:
        record(request, "authenticate", "denied", user=exc.name, reason=exc.reason)
        raise
    if not principal.authenticated and not anonymous_allowed(request, name):
        # One answer for every route, as CouchDB gives it: 401 with a challenge, never 403.
        raise Unauthorized("You are not authorized to access this resource.", headers=CHALLENGE)
    # Who the caller is, offline or not, and the rules in force: worked out here, once.
    sync = request.app[INDEX]
    request[CALLER] = await caller.resolve(principal, sync.current_settings, sync.settings)
    if principal.name is not None:
        request[USER_NAME_KEY] = principal.name
    return await handler(request)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Failed authentication and requests the access rules deny, recorded once per request
    (logins and token issues are recorded by their routes)."""
    try:
        return await handler(request)
    except AuthFailed as exc:
        record(request, "authenticate", "failure", reason=exc.reason)
        raise
    except Forbidden as exc:
        record(request, "request", "denied", reason=exc.reason)
        raise
