"""`GET /_couchgate/metrics`: Prometheus text, from a registry of this app's own."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from proxy.errors import Forbidden
from proxy.keys import PRINCIPAL, SETTINGS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.conflicts = Gauge(
            "couchgate_conflicts", "Conflicted docs in the main database", registry=self.registry
        )
        self.conflicts_resolved = Gauge(
            "couchgate_conflicts_auto_resolved",
            "Conflicts the background resolver resolved",
            registry=self.registry,
        )
        self.index_docs = Gauge(
            "couchgate_index_docs", "Docs in the offline users' scope index", registry=self.registry
        )
        self.audit_queued = Gauge(
            "couchgate_audit_queued", "Audit entries waiting to be written", registry=self.registry
        )
        self.audit_dropped = Gauge(
            "couchgate_audit_dropped", "Audit entries dropped (queue full)", registry=self.registry
        )


METRICS = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (admins, unless COUCHGATE_METRICS_PUBLIC)."""
    if not request.app[SETTINGS].metrics_public and not request[PRINCIPAL].is_admin:
        raise Forbidden("You are not a server admin.")
    from proxy.audit.log import AuditLog
    from proxy.keys import AUDIT, INDEX

    m = request.app[METRICS]
    m.index_docs.set(len(request.app[INDEX].index.entries))
    sink = request.app[AUDIT]
    if isinstance(sink, AuditLog):
        m.audit_queued.set(len(sink.queue))
        m.audit_dropped.set(sink.dropped)
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
