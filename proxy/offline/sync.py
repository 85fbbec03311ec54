"""Keeps the scope index level with CouchDB.

One `IndexSync` per couchgate process. The index is fed only by `sync()`, which reads the
upstream `_changes` feed (normal mode) from the index's checkpoint and applies every row:
- a request calls `sync()` before answering, so it never answers from a state older than
  CouchDB's at the start of the request (read-your-writes, across replicas too); calls are
  coalesced, so under load one upstream read serves every waiting request;
- a follower task holds a continuous `_changes` feed open only as a wake-up signal and calls
  `sync()` when anything changes, so live feeds wake within milliseconds; it reconnects
  with backoff.
The checkpoint is CouchDB's opaque `last_seq`, handed back as `since` and never compared.
The index lives in memory and is rebuilt from CouchDB on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson

from proxy.access.config import AppSettings
from proxy.access.scope_index import ScopeIndex
from proxy.couch.client import MAPPED_ERRORS, CouchClient
from proxy.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger("couchgate.index")

BATCH = 2000
RETRYABLE: tuple[type[BaseException], ...] = (UpstreamError, *MAPPED_ERRORS)
USER_PREFIX = "org.couchdb.user:"


class IndexSync:
    def __init__(
        self, couch: CouchClient, db: str, on_user_change: Callable[[str], None] | None = None
    ) -> None:
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self.index = ScopeIndex()
        self.epoch = uuid.uuid4().hex[:12]
        self.settings = AppSettings.from_doc(None)
        self.since: Any = 0
        self.on_user_change = on_user_change
        self.built = asyncio.Event()
        self.last_sync_at = 0.0
        self._lock = asyncio.Lock()
        self._rounds_started = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._settings_loaded = False

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

    async def sync(self) -> None:
        """Return once the index holds at least CouchDB's state as of this call."""
        wanted = self._rounds_started + 1
        async with self._lock:
            if self._rounds_started >= wanted:
                return  # a round that began after our call has just completed
            self._rounds_started += 1
            applied = await self._pull()
        self.built.set()
        self.last_sync_at = time.monotonic()
        if applied:
            async with self._changed:
                self._changed.notify_all()

    async def _pull(self) -> int:
        applied = 0
        while True:
            params = {
                "since": self.since if isinstance(self.since, str) else orjson.dumps(self.since).decode(),
                "include_docs": "true",
                "style": "all_docs",
                "limit": str(BATCH),
            }
            result = await self.couch.json("GET", f"{self.path}/_changes", params=params)
            if not result.ok or not isinstance(result.body, dict):
                raise UpstreamError(f"CouchDB answered {result.status} to the index's changes read")
            rows = result.body.get("results")
            rows = rows if isinstance(rows, list) else []
            for row in rows:
                self._apply_row_safely(row)
            applied += len(rows)
            self.since = result.body.get("last_seq", self.since)
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

    def _use_settings(self, doc: dict[str, Any] | None) -> None:
        self.settings = AppSettings.from_doc(doc)
        self.index.set_person_types(self.settings.person_types)
        for problem in self.settings.problems:
            log.warning("settings: %s", problem)

    async def wait_for_change(self, limit: float) -> bool:
        """Wait until a sync applies something; False on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), limit)
            except TimeoutError:
                return False
            return True

    # -- the follower ----------------------------------------------------------------------

    async def follow(self) -> None:
        """Run until cancelled: build the index, then sync whenever CouchDB reports a change."""
        backoff = 0.5
        waker = asyncio.create_task(self._sync_on_wake())
        try:
            while True:
                try:
                    await self.sync()
                    await self._listen()
                    backoff = 0.5
                except RETRYABLE as exc:
                    log.warning(
                        "index follower lost CouchDB, retrying in %.1fs: %s", backoff, type(exc).__name__
                    )
                except Exception:
                    # A bug must not end the follower for the life of the process: live
                    # feeds would stop waking. Log it and go on after the backoff.
                    log.exception("index follower failed, retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        finally:
            waker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waker

    async def _listen(self) -> None:
        headers = {
            "Authorization": self.couch.service_auth,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        since = self.since if isinstance(self.since, str) else orjson.dumps(self.since).decode()
        target = f"{self.path}/_changes?feed=continuous&heartbeat=10000&since={quote(since, safe='')}"
        async with self.couch.stream("GET", target, headers=headers) as resp:
            if resp.status != 200:
                raise UpstreamError(f"CouchDB answered {resp.status} to the index's continuous feed")
            async for line in resp.content:
                if line.strip():
                    self._wake.set()

    async def _sync_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except RETRYABLE as exc:
                log.warning("index sync failed: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("index sync failed")
                await asyncio.sleep(0.5)
