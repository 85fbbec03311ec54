"""What operators see of each request: request metrics, upstream metrics, and the sync
activity of offline users (for `GET /_couchgate/users`).

Two middlewares (see `create_app`):
- `request_metrics_middleware`, right after the request id: times every request to its
  last byte and counts it by route class, method, status class and caller kind, whatever
  the answer (errors included, as the error middleware inside it shaped them);
- `caller_middleware`, innermost (after authentication): says who the caller is (admin,
  offline, token, online; anonymous when authentication did not get that far) and, for
  offline users, which sync endpoint they reached and whether it is a live feed.

Code that serves requests reports what only it knows through the hooks below (a doc body
served, a feed restarted from the beginning, a refused doc, ...). They write into the
request's `Observation` (a context variable: no request object is needed, and they cost a
lookup when no request is being observed); it is added to the metrics when the request ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from proxy.access.paths import BadPath, CouchPath
from proxy.activity import ACTIVITY
from proxy.couch.client import LIVE_FEEDS
from proxy.keys import CALLER, INDEX
from proxy.metrics import METRICS, Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "COPY", "OPTIONS"}
# Route classes by route name; a route not named here is its own class (the router's
# routes are a fixed set, so the label stays bounded).
ROUTE_CLASSES = {
    "health": "probe",
    "ready": "probe",
    "issue_token": "token",
    "session": "session",
    "audit_list": "audit",
    "audit_doc": "audit",
    "audit_verify": "audit",
    "user_scope": "users",
    "users_list": "users",
    "metrics": "metrics",
    "conflicts_list": "conflicts",
    "conflict_show": "conflicts",
    "conflict_resolve": "conflicts",
    "conflict_split": "conflicts",
    "import_default": "import",
    "import_db": "import",
    "console": "console",
    "console_asset": "console",
    "couchdb_proxy": "passthrough",
}
# The replication endpoints an offline user's requests are named by (proxy/offline/routes.py).
SYNC_ENDPOINTS = {"_changes", "_all_docs", "_bulk_get", "_revs_diff", "_bulk_docs", "_ensure_full_commit"}
WRITE_ACTIONS = {"create", "update", "delete", "attachment"}
AUTH_ACTIONS = {"authenticate", "login", "token"}


@dataclass
class Observation:
    """One request as the metrics see it; filled in while it is served."""

    route: str
    method: str
    caller: str = "anonymous"
    user: str | None = None
    live: bool = False
    docs_served: int = 0
    backfills: int = 0
    removals: int = 0
    refused_docs: int = 0  # docs (or whole requests) the access rules refused
    forbidden_writes: int = 0
    import_docs: dict[tuple[str, bool], int] = field(default_factory=dict)
    auth_failures: dict[str, int] = field(default_factory=dict)
    throttled: int = 0


CURRENT: ContextVar[Observation | None] = ContextVar("couchgate_observation", default=None)


# -- hooks for the code that serves requests --------------------------------------------------


def doc_served(count: int = 1) -> None:
    """A doc body judged servable and sent to an offline user."""
    obs = CURRENT.get()
    if obs is not None:
        obs.docs_served += count


def backfill_started() -> None:
    """An offline `_changes` feed restarted from the beginning: its since token was given
    but could not be resumed."""
    obs = CURRENT.get()
    if obs is not None:
        obs.backfills += 1


def removals_sent(count: int = 1) -> None:
    """Docs an offline user may no longer read, sent to that user as removals."""
    obs = CURRENT.get()
    if obs is not None:
        obs.removals += count


def auth_throttled() -> None:
    """A request refused by authentication throttling."""
    obs = CURRENT.get()
    if obs is not None:
        obs.throttled += 1


def audited(action: str, outcome: str) -> None:
    """Every audit entry recorded for the request (proxy/audit/recorder.py): refused docs and
    requests, and failed authentications, are counted from them."""
    obs = CURRENT.get()
    if obs is None:
        return
    if action in AUTH_ACTIONS and outcome == "failure":
        obs.auth_failures[action] = obs.auth_failures.get(action, 0) + 1
    elif outcome in ("forbidden", "denied") and obs.caller == "offline":
        obs.refused_docs += 1
        if action in WRITE_ACTIONS:
            obs.forbidden_writes += 1


def imported(rows: list[dict[str, Any]], dry_run: bool) -> None:
    """Rows of an import answer (proxy/importer/pipeline.py), counted by status."""
    obs = CURRENT.get()
    if obs is None:
        return
    for row in rows:
        key = (str(row.get("status")), dry_run)
        obs.import_docs[key] = obs.import_docs.get(key, 0) + 1


# -- classification ---------------------------------------------------------------------------


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def is_live(query: Mapping[str, str]) -> bool:
    return query.get("feed") in LIVE_FEEDS


def offline_endpoint(raw_path: str, db: str, live: bool) -> str:
    """The name of the sync endpoint an offline user's request reached (as
    proxy/offline/routes.py serves them); `offline_refused` for everything else."""
    try:
        path = CouchPath.parse(raw_path)
    except BadPath:
        return "offline_refused"
    if not path.segments:
        return "offline_root"
    if path.db == "_users":
        return "offline_own_user"
    if path.db != db or path.is_server:
        return "offline_refused"
    if len(path.segments) == 1:
        return "offline_db"
    doc_id = path.doc_id
    if doc_id is None:
        second = path.segments[1]
        if second not in SYNC_ENDPOINTS:
            return "offline_refused"
        return "offline_changes_live" if second == "_changes" and live else f"offline{second}"
    if doc_id.startswith("_local/"):
        return "offline_local"
    return "offline_attachment" if path.rest else "offline_doc"


def caller_kind(request: web.Request) -> tuple[str, str | None]:
    """(kind, user name) of the caller. Offline or not as the caller was judged; when the
    settings could not be read, as the settings the index holds say (the request fails on
    its own where it depends on the judgement)."""
    caller = request.get(CALLER)
    if caller is None or not caller.authenticated:
        return "anonymous", None
    if caller.is_admin:
        return "admin", caller.name
    if caller.offline_at_hand:
        return "offline", caller.name
    return ("token" if caller.principal.method == "jwt" else "online"), caller.name


# -- the middlewares --------------------------------------------------------------------------


def _route_class(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    if name is None:
        return "other"
    cls = ROUTE_CLASSES.get(name, name)
    if cls == "passthrough" and is_live(request.query):
        return "passthrough_live"
    return cls


@web.middleware
async def request_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    obs = Observation(_route_class(request), request.method if request.method in METHODS else "other")
    token = CURRENT.set(obs)
    started = time.perf_counter()
    code = 0  # none: the client went away, or the request was cancelled
    sent = 0
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        code = response.status
        if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
            sent = len(response.body)
        else:
            sent = response.body_length
        return response
    except web.HTTPException as exc:  # redirects and the like (errors are shaped inside)
        code = exc.status
        raise
    finally:
        CURRENT.reset(token)
        metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        account(metrics, obs, status_class(code) if code else "aborted", elapsed, sent)
        if obs.caller == "offline" and obs.user is not None:
            activity = request.app.get(ACTIVITY)
            if activity is not None:
                # Errors: what broke the sync (CouchDB or couchgate failing, a request
                # couchgate could not take); refusals: what the access rules refused.
                failed = code >= 500 or code in (400, 413)
                activity.saw(obs.user, obs.route, error=failed, refused=obs.refused_docs)


@web.middleware
async def caller_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    obs = CURRENT.get()
    if obs is None:
        return await handler(request)
    obs.caller, obs.user = caller_kind(request)
    if obs.caller != "offline" or obs.route not in ("passthrough", "passthrough_live"):
        return await handler(request)
    obs.live = is_live(request.query)
    obs.route = offline_endpoint(request.rel_url.raw_path, request.app[INDEX].db, obs.live)
    if obs.route != "offline_changes_live":
        return await handler(request)
    gauge = request.app[METRICS].live_feeds
    gauge.inc()
    try:
        return await handler(request)
    finally:
        gauge.dec()


def account(m: Metrics, obs: Observation, status: str, elapsed: float, sent: int) -> None:
    m.requests.labels(obs.route, obs.method, status, obs.caller).inc()
    m.request_seconds.labels(obs.route, obs.method, obs.caller).observe(elapsed)
    if obs.caller == "offline":
        m.bytes_served.labels(obs.route).inc(sent)
    for counter, value in (
        (m.docs_served, obs.docs_served),
        (m.backfills, obs.backfills),
        (m.removals, obs.removals),
        (m.forbidden_writes, obs.forbidden_writes),
        (m.auth_throttled, obs.throttled),
    ):
        if value:
            counter.inc(value)
    for (import_status, dry_run), count in obs.import_docs.items():
        m.import_docs.labels(import_status, "true" if dry_run else "false").inc(count)
    for kind, count in obs.auth_failures.items():
        m.auth_failures.labels(kind).inc(count)


# -- upstream -----------------------------------------------------------------------------------


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return "os"
    return "other"


def upstream_tracing(m: Metrics) -> aiohttp.TraceConfig:
    """Counts and times every request to CouchDB (to the start of its answer)."""
    config = aiohttp.TraceConfig()

    async def start(_: aiohttp.ClientSession, ctx: SimpleNamespace, __: Any) -> None:
        ctx.started = time.perf_counter()

    async def end(
        _: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        method = params.method if params.method in METHODS else "other"
        status = params.response.status
        m.upstream_requests.labels(method, status_class(status)).inc()
        m.upstream_seconds.labels(method).observe(time.perf_counter() - ctx.started)
        if status >= 500:
            m.upstream_errors.labels("http_5xx").inc()

    async def failed(
        _: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        m.upstream_errors.labels(error_kind(params.exception)).inc()

    config.on_request_start.append(start)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    config.freeze()
    return config


def trace_upstream(session: aiohttp.ClientSession, m: Metrics) -> None:
    """Add the tracing to a session already made (aiohttp reads the list on each request)."""
    session.trace_configs.append(upstream_tracing(m))
