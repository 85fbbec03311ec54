"""`GET /_couchgate/metrics`: the scrape. It reads the state of the audit writer, the scope
index and the users-at-risk counts into the registry (`proxy.metrics`) and renders it;
it lives above them so that `proxy.metrics`, which every floor records into, imports
none of them."""

from __future__ import annotations

import math

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.audit.log import AuditLog
from proxy.errors import CouchgateError, Forbidden
from proxy.keys import AUDIT, CALLER, COUCH, INDEX, SETTINGS
from proxy.metrics import METRICS, index_lag, unlevel_for
from proxy.users_at_risk import RISK


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (admins, unless COUCHGATE_METRICS_PUBLIC)."""
    if not request.app[SETTINGS].metrics_public and not request[CALLER].is_admin:
        raise Forbidden("You are not a server admin.")
    app = request.app
    m = app[METRICS]
    sync = app[INDEX]
    m.index_docs.set(len(sync.index.entries))
    sink = app[AUDIT]
    m.sources.audit = sink if isinstance(sink, AuditLog) else None
    m.sources.index = sync
    m.sources.risk = app.get(RISK)
    if isinstance(sink, AuditLog):
        m.audit_queued.set(len(sink.queue))
        m.audit_dropped.set(sink.dropped)
    try:
        seconds, behind = await index_lag(app[COUCH], sync)
    except CouchgateError:
        seconds, behind = unlevel_for(sync), math.nan
    m.index_lag_seconds.set(seconds)
    m.index_changes_behind.set(behind)
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
