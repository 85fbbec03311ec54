"""Prometheus text, from a registry of this app's own (served by `proxy.scrape`).

Every name is documented in docs/metrics.md, and the Grafana dashboard in
deploy/grafana/couchgate.json is built on them. Labels have bounded values only: route
classes (the router's routes, offline sync endpoints by name), methods, status classes,
caller kinds, error kinds, import statuses; never users, paths or doc ids.

Most metrics are updated where things happen (proxy/observe.py); a few are read from the
state of their owner when Prometheus scrapes (`StateCollector`: the audit writer, the
index follower, the users-at-risk counts), and the index's lag is measured at the scrape
with one small upstream read (`index_lag`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets (seconds) from a no-op sync (ms) to a large import or backfill.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AuditState(Protocol):
    written: int
    dropped: int
    failed: int
    refused: int
    batches: int
    write_failures: int

    @property
    def queue(self) -> Any: ...


class IndexState(Protocol):
    restarts: int


class RiskState(Protocol):
    def totals(self) -> tuple[int, int, int]: ...  # offline users, counted, over the limit


@dataclass
class Sources:
    """What the state collector reads at scrape time (bound by the metrics route)."""

    audit: AuditState | None = None
    index: IndexState | None = None
    risk: RiskState | None = None


class StateCollector(Collector):
    """Counters and gauges kept by their owners as plain numbers, read at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        audit, index, risk = self.sources.audit, self.sources.index, self.sources.risk
        counters = (
            ("couchgate_audit_written", "Audit entries stored in the audit database", "written"),
            ("couchgate_audit_batches", "Audit batch docs stored", "batches"),
            ("couchgate_audit_write_failures", "Failed attempts to write audit entries", "write_failures"),
            ("couchgate_audit_refused_writes", "Writes refused (503): audit queue full", "refused"),
            ("couchgate_audit_unrecorded", "Audit entries that could not be built (logged)", "failed"),
        )
        for name, doc, attr in counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(getattr(audit, attr, 0) if audit is not None else 0))
            yield family
        restarts = CounterMetricFamily(
            "couchgate_index_follower_restarts", "Times the index follower lost CouchDB and started again"
        )
        restarts.add_metric([], float(index.restarts if index is not None else 0))
        yield restarts
        offline, counted, over = risk.totals() if risk is not None else (0, 0, 0)
        for name, doc, value in (
            ("couchgate_users_offline", "Offline users known to the users-at-risk counts", offline),
            ("couchgate_users_counted", "Offline users whose docs in scope have been counted", counted),
            ("couchgate_users_over_warn_limit", "Offline users with more docs in scope than "
             "COUCHGATE_SCOPE_WARN_DOCS", over),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sources = Sources()
        r.register(StateCollector(self.sources))
        self.conflicts = Gauge("couchgate_conflicts", "Conflicted docs in the main database", registry=r)
        self.conflicts_resolved = Gauge(
            "couchgate_conflicts_auto_resolved", "Conflicts the background resolver resolved", registry=r
        )
        self.index_docs = Gauge("couchgate_index_docs", "Docs in the offline users' scope index", registry=r)
        self.audit_queued = Gauge("couchgate_audit_queued", "Audit entries waiting to be written", registry=r)
        self.audit_dropped = Gauge(
            "couchgate_audit_dropped", "Audit entries dropped (queue full)", registry=r
        )
        # Requests, by route class, method, status class and caller kind (proxy/observe.py).
        self.requests = Counter(
            "couchgate_requests", "Requests answered", ["route", "method", "status", "caller"], registry=r
        )
        self.request_seconds = Histogram(
            "couchgate_request_duration_seconds",
            "Time to answer a request, to its last byte (live feeds are routes of their own)",
            ["route", "method", "caller"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("couchgate_requests_in_flight", "Requests being answered now", registry=r)
        # Upstream: every request couchgate makes to CouchDB (proxy/observe.py, aiohttp tracing).
        self.upstream_requests = Counter(
            "couchgate_upstream_requests", "Requests to CouchDB that were answered", ["method", "status"],
            registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "couchgate_upstream_errors",
            "Requests to CouchDB that failed (connect, timeout, disconnected, payload, os, other) "
            "or were answered 5xx (http_5xx)",
            ["kind"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "couchgate_upstream_request_duration_seconds",
            "Time until CouchDB's answer began (its headers)",
            ["method"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.index_lag_seconds = Gauge(
            "couchgate_index_lag_seconds",
            "0 when the scope index holds every change CouchDB has, else seconds since it last did",
            registry=r,
        )
        self.index_changes_behind = Gauge(
            "couchgate_index_changes_behind",
            "Changes CouchDB has that the scope index has not applied (NaN: could not be read)",
            registry=r,
        )
        # Offline sync.
        self.live_feeds = Gauge(
            "couchgate_offline_live_feeds", "Offline users' live _changes feeds open now", registry=r
        )
        self.docs_served = Counter(
            "couchgate_offline_docs_served", "Doc bodies served to offline users (each judged)", registry=r
        )
        self.bytes_served = Counter(
            "couchgate_offline_bytes_served", "Response bytes sent to offline users", ["route"], registry=r
        )
        self.backfills = Counter(
            "couchgate_offline_backfills",
            "Offline _changes feeds restarted from the beginning because their since token could "
            "not be resumed (another replica or process, or the user's scope changed)",
            registry=r,
        )
        self.removals = Counter(
            "couchgate_offline_removals_sent",
            "Docs an offline user may no longer read, sent as removals (COUCHGATE_REMOVALS)",
            registry=r,
        )
        self.forbidden_writes = Counter(
            "couchgate_offline_forbidden_writes", "Docs offline users tried to write and were refused",
            registry=r,
        )  # fmt: skip
        # Import, auth.
        self.import_docs = Counter(
            "couchgate_import_docs", "Imported docs by status", ["status", "dry_run"], registry=r
        )
        self.auth_failures = Counter(
            "couchgate_auth_failures",
            "Failed authentications (authenticate: bad credentials on a request; login: POST "
            "/_session; token: POST /_couchgate/token)",
            ["kind"],
            registry=r,
        )
        self.auth_throttled = Counter(
            "couchgate_auth_throttled", "Requests refused by authentication throttling", registry=r
        )


METRICS = web.AppKey("metrics", Metrics)


class IndexPosition(Protocol):
    since: Any
    path: str
    last_sync_at: float


async def index_lag(couch: Any, sync: IndexPosition) -> tuple[float, float]:
    """(seconds, changes) the index is behind CouchDB: one `_changes` read from the index's
    checkpoint. CouchDB says how many changes remain (`pending`); a backend that does not
    (pouchdb-server) is asked for up to 1000 rows, which are counted."""
    since = sync.since if isinstance(sync.since, str) else orjson.dumps(sync.since).decode()
    result = await couch.json("GET", f"{sync.path}/_changes", params={"since": since, "limit": "1"})
    body = result.body if result.ok and isinstance(result.body, dict) else None
    if body is None:
        return unlevel_for(sync), math.nan
    rows = body.get("results")
    count = len(rows) if isinstance(rows, list) else 0
    pending = body.get("pending")
    if isinstance(pending, int):
        behind = float(count + pending)
    elif count:
        more = await couch.json("GET", f"{sync.path}/_changes", params={"since": since, "limit": "1000"})
        rows = more.body.get("results") if more.ok and isinstance(more.body, dict) else None
        behind = float(len(rows)) if isinstance(rows, list) else math.nan
    else:
        behind = 0.0
    return (0.0 if behind == 0 else unlevel_for(sync)), behind


def unlevel_for(sync: IndexPosition) -> float:
    """Seconds since the index was last level with CouchDB (NaN: never yet)."""
    return time.monotonic() - sync.last_sync_at if sync.last_sync_at else math.nan
