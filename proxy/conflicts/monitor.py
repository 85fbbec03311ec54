"""The conflict monitor: counts conflicts for the metrics, calls a webhook when new ones
appear, and (when enabled) resolves the ones whose three-way merge is clean."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from proxy.audit.api import AuditSink, Outcome
from proxy.audit.recorder import Recorder
from proxy.conflicts import service
from proxy.conflicts.bodies import ResolveRequest
from proxy.conflicts.store import ConflictStore, row_revs
from proxy.errors import BadRequest, Conflict, CouchgateError, NotFound
from proxy.metrics import Metrics

log = logging.getLogger("couchgate.conflicts")
PAGE = 200


def leaf_set(row: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A conflicted doc as the view last saw it: its id and every leaf rev."""
    return str(row["id"]), tuple(sorted(row_revs(row)))


class ConflictMonitor:
    def __init__(
        self,
        store: ConflictStore,
        metrics: Metrics,
        audit: AuditSink,
        session: aiohttp.ClientSession,
        webhook: str | None,
        auto_resolve: bool,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.audit = Recorder(audit, user="couchgate")  # its own writes, not a request's
        self.session = session
        self.webhook = webhook
        self.auto_resolve = auto_resolve
        self.known: set[str] | None = None
        self.unmergeable: set[tuple[str, tuple[str, ...]]] = set()

    async def run(self, interval: float) -> None:
        while True:
            # First wait: a couchgate that just started leaves the database alone for a while.
            # The first run then creates the view and builds its index here, in the
            # background, so that listings find it built (a million-doc database takes a
            # while: if the read times out, CouchDB keeps indexing and the next run goes on);
            # every later run keeps it current, which keeps listings with update=true cheap.
            await asyncio.sleep(interval)
            try:
                await self.check()
            except CouchgateError as exc:
                log.warning("conflict monitor could not run: %s", exc.reason)

    async def rows(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            rows, after = await self.store.page(PAGE, after)
            found += rows
            if after is None:
                return found

    async def check(self) -> None:
        rows = await self.rows()
        if self.auto_resolve:
            merged = 0
            for row in rows:
                if await self._auto(row):
                    merged += 1
                    self.metrics.conflicts_resolved.inc()
            # Forget the leaf sets that are gone: they changed, or their doc was resolved.
            self.unmergeable &= {leaf_set(row) for row in rows}
            if merged:
                rows = await self.rows()
        current = {row["id"] for row in rows}
        self.metrics.conflicts.set(len(current))
        new = sorted(current - (self.known or set()))
        if self.known is not None and new and self.webhook:
            await self._announce(new, len(current))
        self.known = current

    async def _auto(self, row: dict[str, Any]) -> bool:
        """Merge one conflict when its three-way merge is clean. A conflict that is not
        (a true conflict, a collision, a deletion, a compacted ancestor) is remembered by
        its leaf set and not tried again until a leaf changes."""
        key = leaf_set(row)
        if key in self.unmergeable:
            return False
        try:
            # `auto` itself refuses collisions, deletions and true conflicts (BadRequest or
            # Conflict below), before it writes anything.
            await service.resolve(self.store, row["id"], ResolveRequest("auto"), False, self._record)
        except (BadRequest, NotFound, Conflict):
            self.unmergeable.add(key)  # left for a person
            return False
        except CouchgateError as exc:
            log.warning("background resolver could not reach CouchDB: %s", exc.reason)
            return False  # transient: tried again next time
        return True

    def _record(self, action: str, outcome: Outcome, **fields: Any) -> None:
        reason = fields.pop("reason", None) or "background auto-merge"
        self.audit.record(action, outcome, db=self.store.db, reason=reason, **fields)

    async def _announce(self, new: list[str], count: int) -> None:
        body: dict[str, Any] = {"event": "conflicts", "db": self.store.db, "new": new, "count": count}
        try:
            async with self.session.post(
                str(self.webhook),
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status >= 300:
                    log.warning("conflicts webhook answered %d", resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("conflicts webhook failed: %s", type(exc).__name__)
