"""The audit log writer: entries chained and numbered at `record()`, written in batches to
a database of their own by a background task, flushed on shutdown.

`record()` never blocks and never raises: an entry it cannot build is logged loudly and
counted, and its seq is not used, so the chain stays whole.

Queue and backpressure (`queue_max`, COUCHGATE_AUDIT_QUEUE_MAX):
- Writes are admitted with `admit()` before they are forwarded. While the queue is past
  the high-water mark (half the bound) and the audit database is writable, a write waits
  (bounded) for the writer to make room; entries of admitted writes are always kept, so
  one huge `_bulk_docs` may take the queue past the bound for a while but loses nothing.
- While the audit database cannot be written, entries queue up to the bound; past it new
  writes are refused with 503 `service_unavailable` and readiness says so.
- Only entries recorded while the database is down *and* the queue is at twice the bound
  (security events from a flood, writes admitted just before) are dropped: numbered all the
  same, so `couchgate audit verify` shows the gap, counted and logged. Nothing is lost silently.

Storage: each flushed batch of one writer is ONE CouchDB doc (`BATCH_TYPE`), so an audited
write costs the backend a share of a doc, not a doc of its own:

    {"_id": "<writer>:<first seq, 12 digits>", "type": "couchgate-audit-batch",
     "writer": ..., "first_seq": ..., "last_seq": ..., "last_hash": <hash of the last entry>,
     "entries": [<entry>, ...]}

An entry keeps every field the API answers (its own `_id`, `writer`, `seq`, `prev_hash`,
`hash`, ...) and is hashed as a whole, so it reads the same wherever it is stored; the views
emit one row per entry. A doc holds at most `batch_size` entries and about
`max_batch_bytes` of JSON (a flush is split into several docs; an entry larger than that
alone is one doc). The id is deterministic: a write whose answer was lost but which did
land is answered 409 when retried, and counts as written once the stored doc is seen to
hold the same entries (same hashes); entries are taken off the queue only then.

Every `checkpoint_interval` seconds (and on close) the writer logs its latest written seq
and hash (`audit checkpoint`), the evidence against which truncation of a writer's newest
entries can be detected (`couchgate audit verify --checkpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
import uuid
from collections import OrderedDict, deque
from itertools import islice
from typing import Any
from urllib.parse import quote

import orjson

from proxy.audit.api import AuditEntry, clean_text
from proxy.audit.chain import GENESIS, entry_hash
from proxy.couch.client import CouchClient
from proxy.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger("couchgate.audit")

DESIGN_ID = "_design/couchgate-audit"
BATCH_TYPE = "couchgate-audit-batch"
INTENT_TYPE = "couchgate-audit-intents"  # batch docs of the chain of intents (see `intend`)
INTENTS_SUFFIX = "~intents"  # a writer's chain of intents is the writer `<writer>~intents`
START_PREFIX = "couchgate-audit-start:"  # + db: where its `_changes` stood when the log began
MAX_BATCH_BYTES = 1_000_000  # well under CouchDB's max_document_size (8 MB by default)
# Intents announced ahead of a push (`AuditLog.announce`): how long, and how many revisions
# across all users, they are remembered (a push sends a batch within seconds of asking).
ANNOUNCED_SECONDS = 120.0
MAX_ANNOUNCED = 50_000
# One row per entry: keys prefixed by what they select on, newest last: [kind, value...,
# ts, entry _id], value [writer, seq] (the entry's key in `chain`). The entry id makes
# every key unique, so a page can start exactly at a key (no `startkey_docid`, which
# pouchdb-server ignores).
INDEX_MAP = """function (doc) {
  if (!doc.entries) { return; }
  var i, e, ts, id, at;
  if (doc.type === 'couchgate-audit-intents') {
    // Intents are listed by action (`action=intent`), and by doc with `action=intent&doc=`.
    for (i = 0; i < doc.entries.length; i++) {
      e = doc.entries[i]; ts = e.ts; id = e._id; at = [e.writer, e.seq];
      emit(['action', e.action, ts, id], at);
      emit(['action+outcome', e.action, e.outcome, ts, id], at);
      var writes = (e.details && e.details.writes) || [];
      for (var w = 0; w < writes.length; w++) {
        if (writes[w] && writes[w][0]) { emit(['intent', writes[w][0], ts, id], at); }
      }
    }
    return;
  }
  if (doc.type !== 'couchgate-audit-batch') { return; }
  for (i = 0; i < doc.entries.length; i++) {
    e = doc.entries[i]; ts = e.ts; id = e._id; at = [e.writer, e.seq];
    emit(['*', '', ts, id], at);
    if (e.doc_id) { emit(['doc', e.doc_id, ts, id], at); }
    if (e.user) { emit(['user', e.user, ts, id], at); }
    emit(['action', e.action, ts, id], at);
    emit(['outcome', e.outcome, ts, id], at);
    if (e.user) { emit(['user+action', e.user, e.action, ts, id], at); }
    if (e.user) { emit(['user+outcome', e.user, e.outcome, ts, id], at); }
    emit(['action+outcome', e.action, e.outcome, ts, id], at);
  }
}"""
# Every entry by [writer, seq], the entry itself as the value: each writer's chain in order
# for `verify` to stream, and the entries of an index page looked up by key.
CHAIN_MAP = """function (doc) {
  if ((doc.type !== 'couchgate-audit-batch' && doc.type !== 'couchgate-audit-intents') || !doc.entries) {
    return;
  }
  for (var i = 0; i < doc.entries.length; i++) {
    var e = doc.entries[i];
    emit([e.writer, e.seq], e);
  }
}"""
# Each batch doc by its newest entry's time, for retention: [writer, last seq, entries, rev].
EXPIRY_MAP = """function (doc) {
  if ((doc.type !== 'couchgate-audit-batch' && doc.type !== 'couchgate-audit-intents') || !doc.entries) {
    return;
  }
  var newest = 0, last = 0;
  for (var i = 0; i < doc.entries.length; i++) {
    var e = doc.entries[i];
    if (e.ts > newest) { newest = e.ts; }
    if (e.seq > last) { last = e.seq; }
  }
  emit(newest, [doc.writer, last, doc.entries.length, doc._rev]);
}"""
# What the log says was written, for `couchgate audit verify`'s gap check: [db, doc id] ->
# the rev an entry says was written, or what an intent announced (its exact rev when known
# in advance, `gen:N` for the Nth revision of an update, `*` for a create).
WRITES_MAP = """function (doc) {
  if (!doc.entries) { return; }
  var i, e;
  if (doc.type === 'couchgate-audit-batch') {
    for (i = 0; i < doc.entries.length; i++) {
      e = doc.entries[i];
      if (e.db && e.doc_id && e.rev_after) { emit([e.db, e.doc_id], e.rev_after); }
    }
  } else if (doc.type === 'couchgate-audit-intents') {
    for (i = 0; i < doc.entries.length; i++) {
      e = doc.entries[i];
      var writes = (e.details && e.details.writes) || [];
      for (var w = 0; w < writes.length; w++) {
        var x = writes[w];
        if (e.db && x && x[0]) { emit([e.db, x[0]], x[1] || (x[2] ? 'gen:' + x[2] : '*')); }
      }
    }
  }
}"""
DESIGN = {
    "_id": DESIGN_ID,
    "language": "javascript",
    "views": {
        "index": {"map": INDEX_MAP},
        "chain": {"map": CHAIN_MAP},
        "expiry": {"map": EXPIRY_MAP},
        "writes": {"map": WRITES_MAP},
    },
}
SECURITY = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["_admin"]}}


@functools.lru_cache(maxsize=4)
def iso(ts_ms: int) -> str:
    """The ISO 8601 time of a millisecond timestamp (the entries of a batch share one)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms / 1000)) + f".{ts_ms % 1000:03d}Z"


def _jsonable(value: Any) -> Any:
    """`value` with every string valid UTF-8 and every part something JSON can carry."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return clean_text(str(value))


class AuditLog:
    def __init__(
        self, couch: CouchClient, db: str, *, batch_size: int = 200, flush_interval: float = 0.5,
        queue_max: int = 100_000, admit_wait: float = 30.0, checkpoint_interval: float = 60.0,
        max_batch_bytes: int = MAX_BATCH_BYTES, writer: str | None = None, batch_type: str = BATCH_TYPE,
        watch_db: str | None = None,
    ) -> None:  # fmt: skip
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self.writer = writer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.batch_type = batch_type
        # The database whose writes `couchgate audit verify` checks for gaps by default: the
        # audit log notes where its `_changes` stood when the log began (see `ensure_db`).
        self.watch_db = watch_db
        # The chain of intents: an entry stored, durably, before each write is forwarded (see
        # `intend`); None while the crash-proof mode is off (COUCHGATE_AUDIT_DURABLE=false).
        self.intents: AuditLog | None = None
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        self.queue_max = queue_max
        self.high_water = max(1, queue_max // 2)
        self.admit_wait = admit_wait
        self.checkpoint_interval = checkpoint_interval
        self.queue: deque[dict[str, Any]] = deque()
        self.seq = 0
        self.prev = GENESIS
        self.written = 0
        self.dropped = 0
        self.failed = 0  # entries that could not be built at all (logged with their traceback)
        self.refused = 0  # writes answered 503 because the queue was full and the db down
        self.batches = 0  # batch docs stored (metrics)
        self.write_failures = 0  # flushes that failed (metrics)
        self.last_error: str | None = None
        self.db_ready = False
        self.last_written: tuple[int, str] | None = None  # (seq, hash) of the newest entry stored
        self._checkpointed: tuple[int, str] | None = None
        self._checkpoint_at = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._lock = asyncio.Lock()
        self._attempted = asyncio.Event()  # set after every flush attempt
        # Intents announced ahead of a push (`announce`), in the chain of intents:
        # (user, db, doc id, rev) -> (the intent's seq, when it was announced), oldest first.
        self._announced: OrderedDict[tuple[str, str, str, str], tuple[int, float]] = OrderedDict()

    # -- recording (request path: no I/O) -----------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        """Queue one entry. Never raises: a failure is logged loudly and counted."""
        self._record_safely(entry)

    def _record_safely(self, entry: AuditEntry) -> bool:
        try:
            return self._queue(entry)
        except Exception:
            self.failed += 1
            log.exception(
                "audit entry could not be recorded (action %s, request %s)",
                getattr(entry, "action", None),
                getattr(entry, "request_id", None),
                extra={"audit_failed": self.failed},
            )
            return False

    def intents_log(self) -> AuditLog:
        """The chain of intents of this writer: its own writer name, its own batch docs, and
        no waiting between flushes (each waits for a writer that needs one)."""
        return AuditLog(
            self.couch, self.db, batch_size=self.batch_size, flush_interval=3600.0,
            queue_max=self.queue_max, writer=self.writer + INTENTS_SUFFIX, batch_type=INTENT_TYPE,
            watch_db=self.watch_db, checkpoint_interval=self.checkpoint_interval,
        )  # fmt: skip

    async def intend(self, entry: AuditEntry) -> None:
        """Store `entry` (an intent, in the chain of intents) before returning: the write it
        announces may then be forwarded, and survives in the log whatever happens to this
        process next. Raises UpstreamUnavailable (503: the write must not go ahead) when the
        audit database cannot be written now."""
        if self.intents is None:
            return
        await self.intents.record_durably(entry)

    async def record_durably(self, entry: AuditEntry) -> None:
        """`record`, then wait until the entry is stored (group commit: every entry queued
        while a flush runs goes out in the next one)."""
        if not self._record_safely(entry):
            raise UpstreamUnavailable("the audit log could not record this write; try again later")
        await self._stored(self.seq)

    def announce(self, entry: AuditEntry, user: str, db: str, pairs: list[tuple[str, str]]) -> None:
        """Queue an intent naming revisions a replication push is about to send (the
        `(doc id, rev)` pairs its `_revs_diff` was told are missing), without waiting for
        it: `stored_ahead` later finds it for the push's `_bulk_docs`. Kept for
        `ANNOUNCED_SECONDS`, at most `MAX_ANNOUNCED` pairs (the oldest forgotten first)."""
        if self.intents is not None:
            self.intents._announce(entry, user, db, pairs)

    async def stored_ahead(self, user: str, db: str, pairs: list[tuple[str, str]]) -> bool:
        """True once every pair has an intent announced by `user` (`announce`) stored; False
        at once if one has none announced (the write then stores its own). Raises
        UpstreamUnavailable, as `intend` does, when the announced intents cannot be stored."""
        if self.intents is None or not pairs:
            return False
        return await self.intents._stored_ahead(user, db, pairs)

    def _announce(self, entry: AuditEntry, user: str, db: str, pairs: list[tuple[str, str]]) -> None:
        if not self._record_safely(entry):
            return
        now = time.monotonic()
        for doc_id, rev in pairs:
            key = (user, db, doc_id, rev)
            self._announced[key] = (self.seq, now)
            self._announced.move_to_end(key)
        self._forget_announced(now)
        self._wake.set()

    async def _stored_ahead(self, user: str, db: str, pairs: list[tuple[str, str]]) -> bool:
        self._forget_announced(time.monotonic())
        seqs = [self._announced.get((user, db, doc_id, rev)) for doc_id, rev in pairs]
        if any(s is None for s in seqs):
            return False
        await self._stored(max(s[0] for s in seqs if s is not None))
        return True

    def _forget_announced(self, now: float) -> None:
        announced = self._announced
        while announced and (
            len(announced) > MAX_ANNOUNCED or next(iter(announced.values()))[1] < now - ANNOUNCED_SECONDS
        ):
            announced.popitem(last=False)

    async def _stored(self, seq: int) -> None:
        """Wait until the entry numbered `seq` is stored (UpstreamUnavailable if it cannot be now)."""
        while self.last_written is None or self.last_written[0] < seq:
            self._attempted.clear()
            self._wake.set()
            await self._attempted.wait()
            if self.last_error is not None and (self.last_written is None or self.last_written[0] < seq):
                raise UpstreamUnavailable(
                    "the audit log cannot be written, so no write is forwarded; try again later"
                )

    def _queue(self, entry: AuditEntry) -> bool:
        ts = int(time.time() * 1000)
        seq = self.seq + 1
        doc: dict[str, Any] = {
            "_id": f"audit-{self.writer}-{seq:012d}",
            "type": "couchgate-audit",
            "ts": ts,
            "time": iso(ts),
            # The fields as they stand (dataclasses.asdict deep-copies, which this hot path
            # cannot afford), tuples as the lists they come back from CouchDB as.
            **{name: (list(v) if type(v) is tuple else v) for name, v in entry.__dict__.items()},
            "writer": self.writer,
            "seq": seq,
            "prev_hash": self.prev,
        }
        try:
            digest = entry_hash(doc)
        except TypeError:  # orjson.JSONEncodeError: text that is not UTF-8, or a value JSON lacks
            doc = _jsonable(doc)
            digest = entry_hash(doc)
        # Numbered only once the entry exists, so a failure above leaves no gap in the chain.
        doc["hash"] = digest
        self.seq, self.prev = seq, digest
        if self.last_error is not None and len(self.queue) >= 2 * self.queue_max:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "audit queue full (%d) while the audit database cannot be written: %d entries dropped",
                    len(self.queue), self.dropped, extra={"audit_dropped": self.dropped},
                )  # fmt: skip
            return False
        self.queue.append(doc)
        if len(self.queue) >= self.batch_size:
            self._wake.set()
        return True

    @property
    def refusing(self) -> bool:
        """New writes are refused: the audit database cannot be written and the queue is full."""
        return self.last_error is not None and len(self.queue) >= self.queue_max

    async def admit(self) -> None:
        """Called before a write is forwarded: waits (bounded) while the queue is past its
        high-water mark, and refuses the write while the audit database cannot be written
        and the queue is full."""
        if len(self.queue) < self.high_water:
            return
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + self.admit_wait
        while self.last_error is None and len(self.queue) >= self.high_water:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break  # the writer is slow but working: its entries are kept
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._room.wait()
        if self.refusing:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.error(
                    "audit log cannot be written and its queue is full (%d): %d writes refused",
                    len(self.queue), self.refused, extra={"audit_refused": self.refused},
                )  # fmt: skip
            raise UpstreamUnavailable(
                "the audit log cannot be written and its queue is full; try again later"
            )

    # -- writing (background) ----------------------------------------------------------------

    async def ensure_db(self) -> None:
        """Create the audit database (admins only) and its index, if missing."""
        result = await self.couch.json("PUT", self.path)
        if result.status not in (201, 202, 412):
            raise UpstreamError(f"cannot create the audit database ({result.status})")
        security = await self.couch.json("PUT", f"{self.path}/_security", body=SECURITY)
        if not security.ok and security.status != 409:  # 409: the other chain set it just now
            raise UpstreamError(f"cannot make the audit database admin-only ({security.status})")
        current = await self.couch.json("GET", f"{self.path}/{DESIGN_ID}")
        body = current.body if current.ok and isinstance(current.body, dict) else None
        if body is None or body.get("views") != DESIGN["views"]:
            doc = {**DESIGN, **({"_rev": body["_rev"]} if body else {})}
            saved = await self.couch.json("PUT", f"{self.path}/{DESIGN_ID}", body=doc)
            if not saved.ok and saved.status != 409:  # 409: another replica saved it first
                raise UpstreamError(f"cannot save the audit index ({saved.status})")
        if self.watch_db is not None:
            await self._mark_start(self.watch_db)
        self.db_ready = True

    async def _mark_start(self, db: str) -> None:
        """Note, once, where `db`'s `_changes` stood when the audit log began: writes before
        it were not made through an audited couchgate, so the gap check starts there."""
        marker = f"{self.path}/{quote(START_PREFIX + db, safe='')}"
        if (await self.couch.json("GET", marker)).ok:
            return
        info = await self.couch.json("GET", "/" + quote(db, safe=""))
        if not info.ok or not isinstance(info.body, dict):
            return  # the database does not exist yet: every write to it is checked
        body = {"db": db, "since": info.body.get("update_seq"), "ts": int(time.time() * 1000)}
        await self.couch.json("PUT", marker, body=body)  # 409: another replica noted it first

    async def flush(self) -> bool:
        """Write everything queued; False if the audit database cannot be written now."""
        async with self._lock:
            try:
                if not self.db_ready:
                    await self.ensure_db()
                while self.queue:
                    batch = self.next_batch()
                    stored = await self._write_batch(batch)
                    # Off the queue only once stored: a failed write leaves every entry queued.
                    for _ in range(stored):
                        self.queue.popleft()
                    self.written += stored
                    self.batches += 1
                    self.last_written = (int(batch[stored - 1]["seq"]), str(batch[stored - 1]["hash"]))
                    if len(self.queue) < self.high_water:
                        self._room.set()
            except UpstreamError as exc:
                self.write_failures += 1
                if self.last_error is None:
                    log.error(
                        "audit log cannot be written (%s); %d entries queued", exc.reason, len(self.queue),
                        extra={"audit_error": exc.reason, "audit_queued": len(self.queue)},
                    )  # fmt: skip
                self.last_error = exc.reason
                self._room.set()  # writes waiting for room learn that none is coming
                return False
            else:
                if self.last_error is not None:
                    log.warning("audit log writable again; %d entries written so far", self.written)
                self.last_error = None
                return True
            finally:
                self._attempted.set()

    async def retry_now(self, within: float = 0.5) -> None:
        """While the audit database could not be written: have the writer try again now and
        wait (at most `within` seconds) for that attempt, so `health()` tells the present."""
        if self.intents is not None:
            await self.intents.retry_now(within / 2)
            within /= 2
        if self.last_error is None:
            return
        self._attempted.clear()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._attempted.wait()

    def next_batch(self) -> list[dict[str, Any]]:
        """The entries at the head of the queue that go into one batch doc: at most
        `batch_size`, and no more than `max_batch_bytes` of JSON unless the first alone is."""
        batch: list[dict[str, Any]] = []
        size = 0
        for entry in islice(self.queue, self.batch_size):
            length = len(orjson.dumps(entry)) + 1
            if batch and size + length > self.max_batch_bytes:
                break
            batch.append(entry)
            size += length
        return batch

    @staticmethod
    def batch_doc(writer: str, batch: list[dict[str, Any]], batch_type: str = BATCH_TYPE) -> dict[str, Any]:
        first, last = batch[0], batch[-1]
        return {
            "_id": f"{writer}:{int(first['seq']):012d}",
            "type": batch_type,
            "writer": writer,
            "first_seq": first["seq"],
            "last_seq": last["seq"],
            "last_hash": last["hash"],
            "entries": batch,
        }

    async def _write_batch(self, batch: list[dict[str, Any]]) -> int:
        """Store `batch` as one doc; how many of its entries (from the first) are stored."""
        doc = self.batch_doc(self.writer, batch, self.batch_type)
        doc_path = f"{self.path}/{quote(doc['_id'], safe='')}"
        result = await self.couch.json("PUT", doc_path, body=doc)
        if result.ok:
            return len(batch)
        if result.status != 409:
            error = result.body.get("error") if isinstance(result.body, dict) else None
            raise UpstreamError(f"audit write answered {result.status}" + (f" ({error})" if error else ""))
        # An earlier attempt landed and its answer was lost; the queue may have grown since, so
        # the stored doc holds the same entries or a prefix of them.
        current = await self.couch.json("GET", doc_path)
        if not current.ok or not isinstance(current.body, dict):
            raise UpstreamError(f"audit batch {doc['_id']} exists but could not be read ({current.status})")
        landed = current.body.get("entries")
        landed = landed if isinstance(landed, list) else []
        hashes = [e.get("hash") if isinstance(e, dict) else None for e in landed]
        if not hashes or hashes != [e["hash"] for e in batch[: len(hashes)]]:
            raise UpstreamError(f"audit batch {doc['_id']} is stored with other entries")
        return len(hashes)

    def checkpoint(self, force: bool = False) -> None:
        """Log the newest stored entry's seq and hash (a JSON log line with `audit_checkpoint`)."""
        now = time.monotonic()
        if self.last_written is None or self.last_written == self._checkpointed:
            return
        if not force and now - self._checkpoint_at < self.checkpoint_interval:
            return
        seq, digest = self.last_written
        log.info(
            "audit checkpoint: writer %s seq %d hash %s", self.writer, seq, digest,
            extra={"audit_checkpoint": {"writer": self.writer, "seq": seq, "hash": digest}},
        )  # fmt: skip
        self._checkpointed, self._checkpoint_at = self.last_written, now

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # shutdown's cancellation when the wake-up comes at the same moment.
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            self.checkpoint()

    async def close(self, attempts: int = 5) -> None:
        for _ in range(attempts):
            if await self.flush():
                self.checkpoint(force=True)
                return
            await asyncio.sleep(0.2)
        log.error("audit log closed with %d entries unwritten", len(self.queue))

    def health(self) -> dict[str, Any]:
        if self.intents is not None and self.last_error is None and self.intents.last_error is not None:
            return {**self.intents.health(), "writer": self.writer}  # writes are refused: say so
        return {
            "writer": self.writer,
            "queued": len(self.queue),
            "queue_max": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "refusing_writes": self.refusing,
            "refused": self.refused,
            "error": self.last_error,
        }
