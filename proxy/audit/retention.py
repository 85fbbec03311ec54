"""Removes audit entries older than the retention period, and leaves a marker per writer
saying up to which seq it removed, so `verify` can tell retention from tampering.

Entries are stored in batch docs (see proxy/audit/log.py) and a batch doc goes whole: it is
removed once its *newest* entry is past the cutoff. Its older entries may therefore outlive
the retention period by the time that batch took to fill: at most a flush interval
(COUCHGATE_AUDIT_FLUSH_INTERVAL) normally, longer only for entries that queued while the
audit database could not be written.
"""

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
BATCH = 500  # batch docs per round


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
        """Remove every batch doc whose newest entry is past the cutoff; the number of
        entries removed."""
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.days * 86_400_000
        couch, path = self.audit.couch, self.audit.path
        removed = 0
        while True:
            params = {"endkey": orjson.dumps(cutoff).decode(), "limit": str(BATCH)}
            result = await couch.json("GET", f"{path}/{DESIGN_ID}/_view/expiry", params=params)
            if result.status == 404:
                return removed  # no audit database (or index) yet: nothing to remove
            if not result.ok or not isinstance(result.body, dict):
                raise UpstreamError(f"the audit expiry index answered {result.status}")
            batches = [
                (str(row["id"]), row["value"])
                for row in result.body.get("rows", [])
                if isinstance(row, dict) and isinstance(row.get("value"), list) and len(row["value"]) == 4
            ]
            if not batches:
                return removed
            await self._mark([value for _, value in batches])
            tombstones = [{"_id": doc_id, "_rev": value[3], "_deleted": True} for doc_id, value in batches]
            answer = await couch.json("POST", f"{path}/_bulk_docs", body={"docs": tombstones})
            if not answer.ok or not isinstance(answer.body, list):
                raise UpstreamError(f"retention delete answered {answer.status}")
            deleted = {r.get("id") for r in answer.body if isinstance(r, dict) and "error" not in r}
            if not deleted:  # every one refused: stop rather than ask again forever
                raise UpstreamError("retention could not delete any expired audit batch")
            removed += sum(int(value[2]) for doc_id, value in batches if doc_id in deleted)

    async def _mark(self, batches: list[list[Any]]) -> None:
        """Record, per writer, the highest seq about to be removed (before removing it)."""
        highest: dict[str, int] = {}
        for writer, last_seq, _, _ in batches:
            highest[str(writer)] = max(highest.get(str(writer), 0), int(last_seq))
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
