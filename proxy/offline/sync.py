"""Keeps the scope index level with CouchDB.

One `IndexSync` per couchgate process. The index is fed only by `sync()`, which reads the
upstream `_changes` feed (normal mode) from the index's checkpoint and applies every row:
- a request calls `sync()` before answering, so it never answers from a state older than
  CouchDB's at the start of the request (read-your-writes, across replicas too); calls are
  coalesced, so under load one upstream read serves every waiting request;
- a follower task holds a continuous `_changes` feed open only as a wake-up signal and calls
  `sync()` when anything changes, so live feeds wake within milliseconds.

When CouchDB stops answering (a round fails, or the follower's feed misses its heartbeats
for `SILENT_AFTER` seconds), the index is `failing`: requests that need it get 503 at once
instead of queueing behind rounds that time out, and readiness says 503. The follower then
probes CouchDB every `PROBE_INTERVAL` seconds with a short request, and the first answer
starts a round right away, so waiting live feeds hear of changes within about a second of
CouchDB answering again; the index is level (and ready) once that round has completed.
Backoff grows only while CouchDB answers the probe but rounds still fail.
The checkpoint is CouchDB's opaque `last_seq`, handed back as `since` and never compared.
The index lives in memory and is rebuilt from CouchDB on start.

Why a request cannot skip its round when the follower has just heard from CouchDB: a line
or heartbeat of the continuous feed that *arrives* after the request did may have been
*written* before it (it was in flight), and CouchDB writes a change to a continuous feed
only some time after committing it (after its update notification, per shard in a
cluster), so silence on the feed proves nothing either. Only an answer to a read sent
after the request arrived shows CouchDB's state as of then: a round that started after
the request's arrival, which is exactly what `sync()` waits for and shares.

The index's millions of objects live as long as the process: after the first build of a
large database they are frozen out of the cyclic garbage collector's reach (see
`freeze_long_lived`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from proxy.access.config import AppSettings
from proxy.access.scope_index import ScopeIndex
from proxy.couch.client import MAPPED_ERRORS, CouchClient, fail_fast
from proxy.errors import UpstreamError, UpstreamUnavailable
from proxy.offline.leaf_cache import Revisions
from proxy.offline.snapshot import Snapshots, database_instance, save_forked
from proxy.offline.welcome import Welcome

log = logging.getLogger("couchgate.index")

BATCH = 2000
# Rows filed into the index since the collector last froze what is alive; past this many,
# the next round freezes again (see `freeze_long_lived`).
FREEZE_EVERY_ROWS = 20_000
RETRYABLE: tuple[type[BaseException], ...] = (UpstreamError, *MAPPED_ERRORS)
USER_PREFIX = "org.couchdb.user:"
HEARTBEAT_MS = 5000  # asked of the follower's continuous feed
SILENT_AFTER = 3 * HEARTBEAT_MS / 1000  # a feed silent this long is dead (a paused or lost CouchDB)
PROBE_INTERVAL = 0.5  # while CouchDB does not answer: how often the follower asks again
PROBE_TIMEOUT = 1.0
MAX_BACKOFF = 30.0
PROBE_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, TimeoutError)
UNAVAILABLE = "couchgate cannot reach CouchDB right now; try again shortly"
PAST_EPOCHS = 100  # earlier epochs whose tokens resume exactly (one per restart)
# Bodies couchgate wrote, kept until the round that reads their change files them (`wrote`):
# a few pushes' batches; the oldest go first (their round then reads them back).
WRITTEN_KEPT = 2000


def _timed_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IndexSync:
    def __init__(
        self,
        couch: CouchClient,
        db: str,
        on_user_change: Callable[[str], None] | None = None,
        horizon_seconds: float = 30 * 86400,
        skew_seconds: float = 5.0,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self.index = ScopeIndex()
        self.welcome = Welcome(couch)  # CouchDB's `GET /`, for offline users
        self.revisions = Revisions()  # what the rules read of conflict leaves (proxy.offline.leaves)
        self.epoch = uuid.uuid4().hex[:12]
        self.settings = AppSettings.from_doc(None)
        self.since: Any = 0
        self.on_user_change = on_user_change
        self.built = asyncio.Event()
        self.last_sync_at = 0.0
        self.restarts = 0  # times the follower lost CouchDB and started again (metrics)
        self._lock = asyncio.Lock()
        self._rounds_started = 0
        # Live feeds waiting for a change: one future each, all woken in one go (a Condition
        # hands its lock from waiter to waiter, one loop turn each: 20,000 turns for 20,000).
        self._waiting: set[asyncio.Future[bool]] = set()
        self._wake = asyncio.Event()
        self._settings_loaded = False
        self._rows_unfrozen = 0
        self._written: OrderedDict[tuple[str, str], Mapping[str, Any]] = OrderedDict()
        self.pages_read_again = 0  # pages read without bodies that needed one couchgate had not kept
        # Why the index cannot be brought level with CouchDB now (None: it can).
        self.failing: str | None = None
        self.probes = 0  # probes CouchDB did not answer (the follower asks every PROBE_INTERVAL)
        self._round_error: str | None = None  # the outcome of the newest round
        # How long the index remembers its past (what left a user's scope can be told to a
        # device whose checkpoint is younger than this); marks of where it stood, over time,
        # are kept in its history (`proxy.access.history.Marks`).
        self.horizon = horizon_seconds
        self.skew_ms = int(skew_seconds * 1000)  # how far replicas' clocks may be apart
        # The index saved on disk (proxy.offline.snapshot): restored before the first round.
        self.snapshots = snapshots
        self._to_restore = snapshots is not None
        self._instance: str | None = None  # the database's instance id, once read
        self.saved_at_ordinal = -1
        self.saved_counts = 0  # the index's `counts_recorded` at the last save
        self.restored = False
        # Earlier epochs of this index (before restarts): the newest ordinal each numbered
        # alike (what the snapshot held; ordinals after it were numbered again since).
        self.past_epochs: dict[str, int] = {}

    # -- syncing ---------------------------------------------------------------------------

    async def current_settings(self) -> AppSettings:
        """The CHT settings; read directly until the index has been built once. Fails closed:
        if they cannot be read, the caller gets 503 rather than a guess that lets an
        offline user through as an online one."""
        if self.built.is_set() or self._settings_loaded:
            return self.settings
        result = await self.couch.json("GET", f"{self.path}/settings")
        if result.status == 404:
            self.settings = AppSettings.from_doc(None)
        elif result.ok and isinstance(result.body, dict):
            self._use_settings(result.body)
        else:
            raise UpstreamUnavailable("couchgate cannot read the app settings yet")
        self._settings_loaded = True
        return self.settings

    async def sync(self, *, probe: bool = False) -> None:
        """Return once the index holds at least CouchDB's state as of this call; raise
        UpstreamUnavailable at once while the index is `failing` (unless `probe`: the
        follower's attempt to end that), and when the round this call waited for failed
        (a failure is shared by every caller waiting for that round, not retried by each)."""
        if self.failing is not None and not probe:
            raise UpstreamUnavailable(UNAVAILABLE, headers=RETRY_AFTER)
        wanted = self._rounds_started + 1
        async with self._lock:
            if self._rounds_started >= wanted:
                # A round that began after our call has just ended: its outcome is ours.
                if self._round_error is not None:
                    raise UpstreamUnavailable(UNAVAILABLE, headers=RETRY_AFTER)
                return
            self._rounds_started += 1
            started = wall_ms()  # the index will hold all CouchDB held by now
            try:
                if self._to_restore:
                    await self._restore()
                applied = await self._pull()
            except RETRYABLE as exc:
                self._round_error = self.failing = _why(exc)
                raise
            self._round_error = self.failing = None
            self._remember(started, wall_ms())
            self._rows_unfrozen += applied
            if self._rows_unfrozen >= FREEZE_EVERY_ROWS:
                self._rows_unfrozen = 0
                freeze_long_lived()
        self.built.set()
        self.last_sync_at = time.monotonic()
        if applied:
            waiting, self._waiting = self._waiting, set()
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(True)

    def wrote(self, written: Iterable[tuple[Mapping[str, Any], str]]) -> None:
        """Bodies couchgate has just written and the revision each is stored under: the round
        that reads their changes files them from here instead of reading each body back.
        The caller vouches that CouchDB stores exactly this body under that revision: one
        whose revision CouchDB made (`new_edits`), or a new doc's (no other writer could
        have named its revision first). A doc with attachments is not kept (CouchDB keeps
        stubs of them, and they may be large)."""
        for doc, rev in written:
            doc_id = doc.get("_id")
            if isinstance(doc_id, str) and "_attachments" not in doc:
                self._written[(doc_id, rev)] = doc
        while len(self._written) > WRITTEN_KEPT:
            self._written.popitem(last=False)

    async def _changes_page(self, since: str, docs: bool) -> tuple[list[Any], Any]:
        """A page of CouchDB's changes after `since` (with the bodies, if `docs`), and its last_seq."""
        params = {"since": since, "style": "all_docs", "limit": str(BATCH)}
        if docs:
            params["include_docs"] = "true"
        result = await self.couch.json("GET", f"{self.path}/_changes", params=params)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"CouchDB answered {result.status} to the index's changes read")
        rows = result.body.get("results")
        return (rows if isinstance(rows, list) else []), result.body.get("last_seq", self.since)

    def _filled(self, rows: list[Any]) -> bool:
        """Give each row of a page read without bodies the body it needs, from what couchgate
        wrote (`wrote`); False when some row needs one that was not kept. Only a row with a
        single leaf is filled (its one revision is the winner, the revision kept): a
        conflicted doc's winner is taken from CouchDB's body, never from the order of its
        leaves. A deleted doc's tombstone needs no body (the index files it by its id)."""
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                continue
            changes = row.get("changes")
            if not isinstance(changes, list) or len(changes) != 1 or not isinstance(changes[0], dict):
                return False
            rev = changes[0].get("rev")
            if not isinstance(rev, str):
                return False
            if row.get("deleted") is True:
                row["doc"] = {"_id": row["id"], "_rev": rev, "_deleted": True}
                continue
            body = self._written.get((row["id"], rev))
            if body is None:
                return False
            row["doc"] = {**body, "_id": row["id"], "_rev": rev}
        return True

    async def _pull(self) -> int:
        applied = 0
        while True:
            since = self.since if isinstance(self.since, str) else orjson.dumps(self.since).decode()
            # After couchgate's own writes, their changes are read without bodies and filed
            # with the bodies it wrote; a page holding any other change is read again whole.
            rows, last_seq = await self._changes_page(since, docs=not self._written)
            if self._written and not self._filled(rows):
                self.pages_read_again += 1
                rows, last_seq = await self._changes_page(since, docs=True)
            for row in rows:
                self._apply_row_safely(row)
                if self._written and isinstance(row, dict) and isinstance(doc := row.get("doc"), dict):
                    filed = (row.get("id"), doc.get("_rev"))
                    if all(isinstance(part, str) for part in filed):
                        self._written.pop(filed, None)  # type: ignore[arg-type]  # filed: not needed again
            applied += len(rows)
            self.since = last_seq
            if len(rows) < BATCH:
                return applied

    def _apply_row_safely(self, row: object) -> None:
        """One bad row must not stop the index for everyone: it is logged and its doc filed
        as unreadable (a body the rules cannot judge gives no one access)."""
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            return
        doc_id: str = row["id"]
        changes = row.get("changes")
        leaves = tuple(
            c["rev"]
            for c in (changes if isinstance(changes, list) else [])
            if isinstance(c, dict) and isinstance(c.get("rev"), str)
        )
        doc = row.get("doc")
        if not isinstance(doc, dict):
            # Rows without a body (a deleted doc on some servers): a tombstone.
            doc = {"_id": doc_id, "_rev": leaves[0] if leaves else "", "_deleted": True}
        try:
            self.index.apply(doc, row.get("seq"), leaves=leaves)
        except Exception:
            log.exception("index could not file doc %.200s; it is unreadable until it changes", doc_id)
            with contextlib.suppress(Exception):
                self.index.apply({"_id": doc_id, "_rev": leaves[0] if leaves else ""}, leaves=leaves)
        try:
            if doc_id == "settings":
                self._use_settings(None if doc.get("_deleted") else doc)
            elif doc_id.startswith(USER_PREFIX) and self.on_user_change is not None:
                self.on_user_change(doc_id[len(USER_PREFIX) :])
        except Exception:
            log.exception("index could not act on the change of %.200s", doc_id)

    # -- the snapshot -------------------------------------------------------------------

    async def _restore(self) -> None:
        """Take up the saved index if it is this database's (else build from CouchDB)."""
        assert self.snapshots is not None
        self._instance = await database_instance(self.couch, self.path)
        self._to_restore = False
        state = self.snapshots.load(self._instance)
        if state is None:
            return
        index, epoch, since, settings, past = (
            state.get(k) for k in ("index", "epoch", "since", "settings", "past_epochs")
        )
        if (
            not isinstance(index, ScopeIndex) or not isinstance(epoch, str)
            or not isinstance(settings, AppSettings) or not isinstance(past, dict)
        ):  # fmt: skip
            log.warning("index snapshot refused (unexpected content): building from CouchDB")
            return
        if await self._settings_now() != settings:
            # Built under other access rules (the settings doc changed while no couchgate
            # ran, or was replaced): what it vouches for was judged otherwise.
            log.warning("index snapshot refused (the app settings changed since): building from CouchDB")
            return
        # Tokens of the saved epoch up to the saved ordinal resume exactly; ordinals after
        # it may have been handed out before the restart for changes numbered otherwise now,
        # so the index goes on under a new epoch and places those tokens by their times.
        self.past_epochs = dict(list({**past, epoch: index.ordinal}.items())[-PAST_EPOCHS:])
        self.index, self.since, self.settings = index, since, settings
        self._settings_loaded = self.restored = True
        self.saved_at_ordinal, self.saved_counts = index.ordinal, index.counts_recorded
        log.info("index restored from its snapshot at ordinal %d; catching up with CouchDB", index.ordinal)

    async def _settings_now(self) -> AppSettings:
        """The app settings as CouchDB holds them now. Raises UpstreamError when they
        cannot be read (no snapshot is taken up unchecked)."""
        result = await self.couch.json("GET", f"{self.path}/settings")
        if result.status == 404:
            return AppSettings.from_doc(None)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"CouchDB answered {result.status} to the settings read")
        return AppSettings.from_doc(result.body)

    def _snapshot_due(self) -> bool:
        return (
            self.snapshots is not None and self._instance is not None and self.built.is_set()
            and (self.index.ordinal, self.index.counts_recorded) != (self.saved_at_ordinal, self.saved_counts)
        )  # fmt: skip

    def _state(self) -> dict[str, Any]:
        return {
            "index": self.index, "epoch": self.epoch, "since": self.since, "settings": self.settings,
            "past_epochs": self.past_epochs,
        }  # fmt: skip

    def save_snapshot(self) -> None:
        """Save the index if it changed since the last save, here (at shutdown: it blocks)."""
        if not self._snapshot_due():
            return
        assert self.snapshots is not None and self._instance is not None
        started, ordinal, counts = time.perf_counter(), self.index.ordinal, self.index.counts_recorded
        try:
            size = self.snapshots.save(self._instance, self._state())
        except OSError as exc:
            log.warning("index snapshot not saved: %s", exc)
            return
        self.saved_at_ordinal, self.saved_counts = ordinal, counts
        log.info("index snapshot saved: %d bytes in %.2f s", size, time.perf_counter() - started)

    async def save_snapshot_aside(self) -> None:
        """Save the index if it changed, from a forked copy of this process: the index as
        it stands at the fork, written while this process goes on serving (pickling a
        large index takes seconds; memory pages the parent changes meanwhile are copied)."""
        if not self._snapshot_due():
            return
        assert self.snapshots is not None and self._instance is not None
        started, ordinal, counts = time.perf_counter(), self.index.ordinal, self.index.counts_recorded
        ok = await save_forked(self.snapshots, self._instance, self._state())
        if ok:
            self.saved_at_ordinal, self.saved_counts = ordinal, counts
            log.info("index snapshot saved aside in %.2f s", time.perf_counter() - started)
        else:
            log.warning("index snapshot not saved (the saving process failed)")

    async def keep_saving(self, interval: float) -> None:
        """Save the snapshot once the index is built, then every `interval` seconds while
        it changes."""
        await self.built.wait()
        while True:
            await self.save_snapshot_aside()
            await asyncio.sleep(interval)

    def _remember(self, level_ms: int, now_ms: int) -> None:
        """Mark where the index stands against CouchDB, and forget the past beyond the horizon."""
        history = self.index.history
        history.marks.mark(self.index.ordinal, level_ms, now_ms)
        oldest = history.marks.forget_before(now_ms - int(self.horizon * 1000))
        if oldest is not None:
            history.forget_before(oldest)

    @property
    def level_ms(self) -> int:
        """When CouchDB held nothing the index lacks now (wall clock, ms; 0 before a build)."""
        marks = self.index.history.marks
        return marks.levels[-1] if len(marks) else 0

    def _use_settings(self, doc: dict[str, Any] | None) -> None:
        if self.index.ordinal:
            self.index.settings_changed(self.settings)  # at the settings doc's own ordinal
        self.settings = AppSettings.from_doc(doc)
        self.index.set_person_types(self.settings.person_types)
        for problem in self.settings.problems:
            log.warning("settings: %s", problem)

    async def wait_for_change(self, limit: float) -> bool:
        """Wait until a sync applies something; False on timeout."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiting.add(waiter)
        timer = loop.call_later(limit, _timed_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiting.discard(waiter)

    # -- the follower ----------------------------------------------------------------------

    async def follow(self) -> None:
        """Run until cancelled: build the index, then sync whenever CouchDB reports a change;
        after a failure, probe until CouchDB answers and go on at once (see the docstring)."""
        streak = 0  # attempts in a row that failed although CouchDB answered the probe before them
        with fail_fast():  # rounds serve waiting phones: a silent CouchDB is a failure soon
            waker = asyncio.create_task(self._sync_on_wake())
        welcome = asyncio.create_task(self.welcome.refresh())  # read before the first sync asks
        try:
            while True:
                try:
                    with fail_fast():
                        await self.sync(probe=True)
                    streak = 0
                    await self._listen()
                    continue  # the feed ended cleanly: open it again
                except RETRYABLE as exc:
                    self.failing = self.failing or _why(exc)
                    log.warning("index follower lost CouchDB: %s", type(exc).__name__)
                except Exception:
                    # A bug must not end the follower for the life of the process: live
                    # feeds would stop waking. Log it and go on after the backoff.
                    self.failing = self.failing or "the index follower failed"
                    log.exception("index follower failed")
                self.restarts += 1
                streak += 1
                if streak > 1:
                    await asyncio.sleep(min(PROBE_INTERVAL * 2 ** (streak - 2), MAX_BACKOFF))
                if not await self._until_answering():
                    streak = 1  # CouchDB was down, not failing our rounds: no backoff to carry
        finally:
            waker.cancel()
            welcome.cancel()
            self.welcome.close()
            with contextlib.suppress(asyncio.CancelledError):
                await waker
            with contextlib.suppress(asyncio.CancelledError):
                await welcome

    async def _until_answering(self) -> bool:
        """Probe CouchDB every PROBE_INTERVAL until it answers; True if the first probe did."""
        first = True
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation of a shutdown when its inner call ends at the same moment.
                async with asyncio.timeout(PROBE_TIMEOUT):
                    result = await self.couch.json("GET", self.path)
                if result.status < 500:
                    return first
            except PROBE_ERRORS:
                pass
            self.probes += 1
            first = False
            await asyncio.sleep(PROBE_INTERVAL)

    async def _listen(self) -> None:
        headers = {
            "Authorization": self.couch.service_auth,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        since = self.since if isinstance(self.since, str) else orjson.dumps(self.since).decode()
        target = (
            f"{self.path}/_changes?feed=continuous&heartbeat={HEARTBEAT_MS}&since={quote(since, safe='')}"
        )
        async with self.couch.stream("GET", target, headers=headers) as resp:
            if resp.status != 200:
                raise UpstreamError(f"CouchDB answered {resp.status} to the index's continuous feed")
            while True:
                try:
                    # Heartbeats arrive every HEARTBEAT_MS: silence past SILENT_AFTER is a CouchDB
                    # that stopped answering (paused, or a connection lost without a reset).
                    async with asyncio.timeout(SILENT_AFTER):
                        line = await resp.content.readline()
                except TimeoutError as exc:
                    raise UpstreamUnavailable("CouchDB's changes feed went silent") from exc
                if not line:
                    return
                if line.strip() or self.failing is not None:
                    self._wake.set()  # a change; or CouchDB answers again after a failed round

    async def _sync_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync(probe=True)
            except RETRYABLE as exc:
                log.warning("index sync failed: %s", type(exc).__name__)
                await asyncio.sleep(PROBE_INTERVAL)
            except Exception:
                log.exception("index sync failed")
                await asyncio.sleep(0.5)


RETRY_AFTER = {"Retry-After": "2"}


def _why(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, UpstreamError) else "CouchDB is not reachable"


def freeze_long_lived() -> None:
    """Move every object alive now out of the generations the cyclic collector walks.

    Python's automatic full (generation-2) collection walks every tracked container: with
    the index of a million docs that is 2.3 million objects and about 0.55 s of a stopped
    event loop on this kind of machine (`python -m bench.index_gc`; more with couchgate's
    other objects, more on a loaded machine), which every request and live feed waits
    out, and it comes back whenever what survived since the last one has grown by a
    quarter. The index's entries, postings and contact tree hold no reference cycles: when
    a doc changes, its old entry is freed by reference counting, frozen or not, so
    freezing them loses nothing, and later full collections walk only what is younger.

    Called once a sync round has brought the rows filed since the last freeze to
    `FREEZE_EVERY_ROWS` (the first build of any but a small database, whose full
    collections are cheap anyway), so what the collector still walks stays bounded by
    about that many rows' objects (tens of ms at worst). The `gc.collect()` first, which
    costs only what is not frozen yet, keeps garbage that is already unreachable from
    being frozen with the rest. What can still leak is a reference cycle alive at the
    freeze that dies later, e.g. a request in flight: about seven objects each.

    The collection thresholds stay Python's (700, 10, 10): young collections cost only
    what is young (a few ms at most, measured with the million-doc index), and higher
    thresholds would let cyclic garbage pile up without shortening any pause; the long
    pause was the full collection over the index, which freezing removes."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "froze %d long-lived objects out of the garbage collector in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )
