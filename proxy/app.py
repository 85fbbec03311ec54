"""`create_app(settings)`: the application, read top to bottom like a table of contents."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from proxy import dispatch, observe, scrape, status, users_at_risk
from proxy.audit import routes as audit_routes
from proxy.audit import verify_route
from proxy.audit.api import NullAudit
from proxy.audit.log import AuditLog
from proxy.audit.recorder import background_intents
from proxy.audit.retention import Retention
from proxy.auth import routes as auth_routes
from proxy.auth.authenticator import Authenticator
from proxy.auth.throttle import LoginThrottle, ThrottleLimits
from proxy.auth.token_guard import TokenGuard
from proxy.auth.tokens import TokenService
from proxy.auth.users import UserInfoCache
from proxy.conflicts import routes as conflicts
from proxy.conflicts.monitor import ConflictMonitor
from proxy.conflicts.store import ConflictStore
from proxy.console import routes as console
from proxy.couch.backend_kind import BackendKind
from proxy.couch.client import CouchClient, new_session
from proxy.couch.security_cache import SecurityCache
from proxy.errors import error_middleware, remember_prepared
from proxy.forward.session import session
from proxy.importer import routes as importer
from proxy.keys import (
    AUDIT,
    AUTHENTICATOR,
    BACKEND_KIND,
    COUCH,
    INDEX,
    REMOVALS,
    SECURITY,
    SETTINGS,
    SINCE_CODEC,
    SINCE_KEY,
    THROTTLE,
    TOKEN_GUARD,
    TOKENS,
    USERS,
)
from proxy.logs import request_id_middleware
from proxy.metrics import METRICS, Metrics
from proxy.middlewares import audit_middleware, auth_middleware, cors_middleware, on_prepare_cors
from proxy.offline import scope
from proxy.offline.removals import Removals
from proxy.offline.since import SinceCodec
from proxy.offline.snapshot import Snapshots
from proxy.offline.sync import IndexSync
from proxy.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        # Outermost first: every response gets a request id and a CouchDB-shaped error body.
        middlewares=[
            request_id_middleware,
            observe.request_metrics_middleware,
            error_middleware,
            cors_middleware,
            audit_middleware,
            auth_middleware,
            observe.caller_middleware,
        ],
        # Bodies are streamed by the handlers and limited there; this bounds what aiohttp buffers.
        client_max_size=settings.max_json_bytes,
    )
    app[SETTINGS] = settings
    app[TOKENS] = TokenService(settings)
    app[THROTTLE] = LoginThrottle(throttle_limits(settings))
    app[AUDIT] = NullAudit()
    secret = settings.since_secret or settings.jwt_secret
    since_key = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
    app[SINCE_CODEC] = SinceCodec(since_key)
    app[SINCE_KEY] = since_key
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(index_ctx)
    app.cleanup_ctx.append(audit_ctx)
    app.cleanup_ctx.append(conflicts_ctx)
    app.cleanup_ctx.append(users_at_risk.users_ctx)
    app[METRICS] = Metrics()
    app.on_response_prepare.append(on_prepare_cors)
    app.on_response_prepare.append(remember_prepared)
    add_routes(app)
    return app


def throttle_limits(settings: Settings) -> ThrottleLimits:
    return ThrottleLimits(
        enabled=settings.login_throttle,
        free_per_name=settings.login_free_failures,
        free_per_address=settings.login_free_failures_per_address,
        base_delay=settings.login_base_delay,
        max_delay=settings.login_max_delay,
        forget_after=settings.login_forget_seconds,
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_couchgate/health", status.health, name="health", allow_head=False)
    r.add_get("/_couchgate/ready", status.ready, name="ready", allow_head=False)
    r.add_post("/_couchgate/token", auth_routes.issue_token, name="issue_token")
    r.add_post("/_couchgate/token/revoke", auth_routes.revoke_tokens, name="revoke_tokens")
    r.add_route("*", "/_session", session, name="session")
    r.add_get("/_couchgate/audit", audit_routes.list_entries, name="audit_list", allow_head=False)
    r.add_get(
        "/_couchgate/audit/docs/{doc_id:.+}", audit_routes.doc_history, name="audit_doc", allow_head=False
    )
    r.add_get("/_couchgate/audit/verify", verify_route.verify, name="audit_verify", allow_head=False)
    r.add_get("/_couchgate/users", users_at_risk.list_users, name="users_list", allow_head=False)
    r.add_get("/_couchgate/users/{name}/scope", scope.user_scope, name="user_scope", allow_head=False)
    r.add_get("/_couchgate/console", console.console, name="console", allow_head=False)
    r.add_get("/_couchgate/console/{asset}", console.console_asset, name="console_asset", allow_head=False)
    r.add_get("/_couchgate/metrics", scrape.metrics, name="metrics", allow_head=False)
    r.add_get("/{db}/_couchgate/conflicts", conflicts.list_conflicts, name="conflicts_list", allow_head=False)
    r.add_post(
        "/{db}/_couchgate/conflicts/{doc_id:.+}/resolve", conflicts.resolve_conflict, name="conflict_resolve"
    )
    r.add_post(
        "/{db}/_couchgate/conflicts/{doc_id:.+}/split", conflicts.split_collision, name="conflict_split"
    )
    r.add_get(
        "/{db}/_couchgate/conflicts/{doc_id:.+}",
        conflicts.show_conflict,
        name="conflict_show",
        allow_head=False,
    )
    r.add_post("/import", importer.import_default, name="import_default")
    r.add_post("/{db}/_couchgate/import", importer.import_db, name="import_db")
    # Everything else is CouchDB's: forwarded for the callers couchgate lets through.
    r.add_route("*", "/{path:.*}", dispatch.couchdb_handler, name="couchdb_proxy")


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """One upstream session for the server's life, and what depends on it."""
    settings = app[SETTINGS]
    session = new_session(settings)
    feeds = new_session(settings, feeds=True)
    couch = CouchClient(session, settings, feeds)
    for traced in (session, feeds):
        observe.trace_upstream(traced, app[METRICS])
    app[COUCH] = couch
    app[USERS] = UserInfoCache(couch, settings.db, settings.auth_cache_seconds)
    app[SECURITY] = SecurityCache(couch)
    app[BACKEND_KIND] = BackendKind(couch)
    app[TOKEN_GUARD] = TokenGuard(couch, app[USERS], settings.auth_db, settings.auth_cache_seconds)
    app[AUTHENTICATOR] = Authenticator(
        couch, app[USERS], app[TOKENS], settings.auth_cache_seconds, app[THROTTLE], app[TOKEN_GUARD]
    )
    try:
        yield
    finally:
        await session.close()
        await feeds.close()


async def index_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scope index of offline users and the one follower that keeps it level with CouchDB."""
    settings = app[SETTINGS]
    horizon = settings.removals_horizon_days * 86400
    snapshots = None
    if settings.state_dir is not None:
        if settings.since_secret or settings.jwt_secret:
            snapshots = Snapshots(settings.state_dir, settings.db, app[SINCE_KEY])
        else:
            log.warning("COUCHGATE_STATE_DIR needs COUCHGATE_SINCE_SECRET: the index is not saved")
    sync = IndexSync(
        app[COUCH], settings.db, on_user_change=app[USERS].invalidate, horizon_seconds=horizon,
        skew_seconds=settings.clock_skew_seconds, snapshots=snapshots,
    )  # fmt: skip
    app[REMOVALS] = Removals.of(app[COUCH], sync.path, app[SINCE_KEY], horizon, settings.removals)
    app[INDEX] = sync
    tasks = [asyncio.create_task(sync.follow(), name="index-follower")]
    if snapshots is not None:
        saver = sync.keep_saving(settings.snapshot_interval_seconds)
        tasks.append(asyncio.create_task(saver, name="index-snapshots"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sync.save_snapshot()  # at shutdown: the next start resumes from here


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The audit log writer; on shutdown it flushes what is still queued."""
    settings = app[SETTINGS]
    if not settings.audit_enabled:
        yield
        return
    log = AuditLog(
        app[COUCH], settings.audit_db, batch_size=settings.audit_batch_size,
        flush_interval=settings.audit_flush_interval, queue_max=settings.audit_queue_max,
        watch_db=settings.db,
    )  # fmt: skip
    app[AUDIT] = log
    tasks = [asyncio.create_task(log.run(), name="audit-writer")]
    if settings.audit_durable:
        log.intents = log.intents_log()
        tasks.append(asyncio.create_task(log.intents.run(), name="audit-intents"))
    if settings.audit_retention_days:
        retention = Retention(log, settings.audit_retention_days)
        tasks.append(
            asyncio.create_task(retention.run(settings.audit_retention_interval), name="audit-retention")
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if log.intents is not None:
            await log.intents.close()
        await log.close()


async def conflicts_ctx(app: web.Application) -> AsyncIterator[None]:
    """The conflict monitor: metrics, the webhook, the optional background resolver."""
    settings = app[SETTINGS]
    store = ConflictStore(app[COUCH], settings.db, background_intents(app[AUDIT], settings.db))
    webhook = str(settings.conflicts_webhook_url) if settings.conflicts_webhook_url else None
    monitor = ConflictMonitor(
        store, app[METRICS], app[AUDIT], app[COUCH].session, webhook, settings.conflicts_auto_resolve
    )
    task = asyncio.create_task(monitor.run(settings.conflicts_interval), name="conflict-monitor")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
