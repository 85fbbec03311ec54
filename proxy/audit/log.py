"""The audit log writer: entries chained and numbered at `record()`, written in batches to
a database of their own by a background task, flushed on shutdown.

`record()` never blocks and never raises. While the audit database cannot be written,
entries wait in a bounded queue and readiness says so; past the bound an entry is dropped
but still numbered, so `couchgate audit verify` shows the gap, and the drop is counted and
logged. Nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import fields
from typing import Any
from urllib.parse import quote

from proxy.audit.api import AuditEntry
from proxy.audit.chain import GENESIS, entry_hash
from proxy.couch.client import CouchClient
from proxy.errors import UpstreamError

log = logging.getLogger("couchgate.audit")

ENTRY_FIELDS = tuple(f.name for f in fields(AuditEntry))
DESIGN_ID = "_design/couchgate-audit"
# One view, keys prefixed by what they select on, newest last: [kind, value, ts].
INDEX_MAP = """function (doc) {
  if (doc.type !== 'couchgate-audit') { return; }
  emit(['*', '', doc.ts], null);
  if (doc.doc_id) { emit(['doc', doc.doc_id, doc.ts], null); }
  if (doc.user) { emit(['user', doc.user, doc.ts], null); }
  emit(['action', doc.action, doc.ts], null);
  emit(['outcome', doc.outcome, doc.ts], null);
}"""
DESIGN = {"_id": DESIGN_ID, "language": "javascript", "views": {"index": {"map": INDEX_MAP}}}
SECURITY = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["_admin"]}}


def iso(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms / 1000)) + f".{ts_ms % 1000:03d}Z"


class AuditLog:
    def __init__(
        self, couch: CouchClient, db: str, *, batch_size: int = 200, flush_interval: float = 0.5,
        queue_max: int = 100_000,
    ) -> None:  # fmt: skip
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self.writer = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_max = queue_max
        self.queue: deque[dict[str, Any]] = deque()
        self.seq = 0
        self.prev = GENESIS
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.db_ready = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- recording (request path: no I/O) -----------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        ts = int(time.time() * 1000)
        self.seq += 1
        doc: dict[str, Any] = {
            "_id": f"audit-{self.writer}-{self.seq:012d}",
            "type": "couchgate-audit",
            "ts": ts,
            "time": iso(ts),
            # Field by field: dataclasses.asdict deep-copies, which this hot path cannot afford.
            **{
                name: (list(v) if isinstance(v := getattr(entry, name), tuple) else v)
                for name in ENTRY_FIELDS
            },
            "writer": self.writer,
            "seq": self.seq,
            "prev_hash": self.prev,
        }
        doc["hash"] = entry_hash(doc)
        self.prev = doc["hash"]
        if len(self.queue) >= self.queue_max:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit queue full (%d): %d entries dropped so far", self.queue_max, self.dropped)
            return
        self.queue.append(doc)
        if len(self.queue) >= self.batch_size:
            self._wake.set()

    # -- writing (background) ----------------------------------------------------------------

    async def ensure_db(self) -> None:
        """Create the audit database (admins only) and its index, if missing."""
        result = await self.couch.json("PUT", self.path)
        if result.status not in (201, 202, 412):
            raise UpstreamError(f"cannot create the audit database ({result.status})")
        await self.couch.json("PUT", f"{self.path}/_security", body=SECURITY)
        current = await self.couch.json("GET", f"{self.path}/{DESIGN_ID}")
        body = current.body if current.ok and isinstance(current.body, dict) else None
        if body is None or body.get("views") != DESIGN["views"]:
            doc = {**DESIGN, **({"_rev": body["_rev"]} if body else {})}
            await self.couch.json("PUT", f"{self.path}/{DESIGN_ID}", body=doc)
        self.db_ready = True

    async def flush(self) -> bool:
        """Write everything queued; False if the audit database cannot be written now."""
        async with self._lock:
            try:
                if not self.db_ready:
                    await self.ensure_db()
                while self.queue:
                    batch = [self.queue[i] for i in range(min(self.batch_size, len(self.queue)))]
                    result = await self.couch.json("POST", f"{self.path}/_bulk_docs", body={"docs": batch})
                    if not result.ok or not isinstance(result.body, list):
                        raise UpstreamError(f"audit write answered {result.status}")
                    # A conflict means an earlier attempt did land (its answer was lost).
                    failed = [
                        r
                        for r in result.body
                        if isinstance(r, dict) and r.get("error") not in (None, "conflict")
                    ]
                    if failed:
                        raise UpstreamError(f"audit write refused: {failed[0].get('error')}")
                    for _ in batch:
                        self.queue.popleft()
                    self.written += len(batch)
            except UpstreamError as exc:
                if self.last_error is None:
                    log.error(
                        "audit log cannot be written (%s); %d entries queued", exc.reason, len(self.queue)
                    )
                self.last_error = exc.reason
                return False
            if self.last_error is not None:
                log.warning("audit log writable again")
            self.last_error = None
            return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            await self.flush()

    async def close(self, attempts: int = 5) -> None:
        for _ in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(0.2)
        log.error("audit log closed with %d entries unwritten", len(self.queue))

    def health(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "queued": len(self.queue),
            "written": self.written,
            "dropped": self.dropped,
            "error": self.last_error,
        }

    @property
    def healthy(self) -> bool:
        return self.last_error is None and self.dropped == 0
