"""Removes audit entries older than the retention period, and leaves a marker per writer
saying up to which seq it removed, so `verify` can tell retention from tampering."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import orjson

from proxy.audit.log import DESIGN_ID, AuditLog
from proxy.errors import UpstreamError

log = logging.getLogger("couchgate.audit")
MARKER_PREFIX = "couchgate-retention-"
BATCH = 500


class Retention:
    def __init__(self, audit: AuditLog, days: int) -> None:
        self.audit = audit
        self.days = days

    async def run(self, interval: float) -> None:
        while True:
            try:
                removed = await self.apply()
                if removed:
                    log.info("audit retention removed %d entries older than %d days", removed, self.days)
            except UpstreamError as exc:
                log.warning("audit retention could not run: %s", exc.reason)
            await asyncio.sleep(interval)

    async def apply(self, now_ms: int | None = None) -> int:
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.days * 86_400_000
        couch, path = self.audit.couch, self.audit.path
        removed = 0
        while True:
            params = {
                "startkey": orjson.dumps(["*", "", 0]).decode(),
                "endkey": orjson.dumps(["*", "", cutoff, {}]).decode(),
                "include_docs": "true",
                "limit": str(BATCH),
            }
            result = await couch.json("GET", f"{path}/{DESIGN_ID}/_view/index", params=params)
            rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
            docs = [r["doc"] for r in rows if isinstance(r.get("doc"), dict)]
            if not docs:
                return removed
            await self._mark(docs)
            tombstones = [{"_id": d["_id"], "_rev": d["_rev"], "_deleted": True} for d in docs]
            answer = await couch.json("POST", f"{path}/_bulk_docs", body={"docs": tombstones})
            if not answer.ok:
                raise UpstreamError(f"retention delete answered {answer.status}")
            removed += len(docs)

    async def _mark(self, docs: list[dict[str, Any]]) -> None:
        """Record, per writer, the highest seq about to be removed (before removing it)."""
        highest: dict[str, int] = {}
        for doc in docs:
            writer, seq = str(doc.get("writer")), int(doc.get("seq", 0))
            highest[writer] = max(highest.get(writer, 0), seq)
        couch, path = self.audit.couch, self.audit.path
        for writer, seq in highest.items():
            marker_path = f"{path}/{quote(MARKER_PREFIX + writer, safe='')}"
            current = await couch.json("GET", marker_path)
            marker = (
                current.body
                if current.ok and isinstance(current.body, dict)
                else {"_id": MARKER_PREFIX + writer}
            )
            if int(marker.get("removed_up_to", 0)) < seq:
                marker.update({"type": "couchgate-retention", "writer": writer, "removed_up_to": seq})
                await couch.json("PUT", marker_path, body=marker)
