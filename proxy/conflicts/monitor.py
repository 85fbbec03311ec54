"""The conflict monitor: counts conflicts for the metrics, calls a webhook when new ones
appear, and (when enabled) resolves the ones whose three-way merge is clean."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from proxy.audit.api import AuditEntry, AuditSink
from proxy.conflicts import service
from proxy.conflicts.model import classify
from proxy.conflicts.store import ConflictStore
from proxy.errors import CouchgateError
from proxy.metrics import Metrics

log = logging.getLogger("couchgate.conflicts")
PAGE = 200


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
        self.audit = audit
        self.session = session
        self.webhook = webhook
        self.auto_resolve = auto_resolve
        self.known: set[str] | None = None

    async def run(self, interval: float) -> None:
        while True:
            # First wait: a couchgate that just started leaves the database alone for a while.
            await asyncio.sleep(interval)
            try:
                await self.check()
            except CouchgateError as exc:
                log.warning("conflict monitor could not run: %s", exc.reason)

    async def ids(self) -> list[str]:
        found: list[str] = []
        after: str | None = None
        while True:
            rows, after = await self.store.page(PAGE, after)
            found += [row["id"] for row in rows]
            if after is None:
                return found

    async def check(self) -> None:
        current = await self.ids()
        if self.auto_resolve:
            for doc_id in current:
                if await self._auto(doc_id):
                    self.metrics.conflicts_resolved.inc()
            current = await self.ids()
        self.metrics.conflicts.set(len(current))
        new = sorted(set(current) - (self.known or set()))
        if self.known is not None and new and self.webhook:
            await self._announce(new, len(current))
        self.known = set(current)

    async def _auto(self, doc_id: str) -> bool:
        try:
            leaves = await self.store.leaves(doc_id)
            if classify(leaves) != "concurrent_edit":
                return False
            answer = await service.resolve(self.store, doc_id, {"strategy": "auto"}, dry_run=False)
        except CouchgateError:
            return False  # not clean, or moved meanwhile: left for a person
        self.audit.record(
            AuditEntry(
                action="resolve",
                outcome="written",
                user="couchgate",
                db=self.store.db,
                doc_id=doc_id,
                rev_after=answer.get("rev"),
                reason="background auto-merge",
                details={"strategy": "auto"},
            )
        )
        return True

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
