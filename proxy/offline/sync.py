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
            self.settings = AppSettings.from_doc(result.body)
            self.index.set_person_types(self.settings.person_types)
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
            rows = result.body.get("results") or []
            for row in rows:
                self._apply_row(row)
            applied += len(rows)
            self.since = result.body.get("last_seq", self.since)
            if len(rows) < BATCH:
                return applied

    def _apply_row(self, row: dict[str, Any]) -> None:
        doc = row.get("doc")
        doc_id = row.get("id")
        if not isinstance(doc_id, str):
            return
        if not isinstance(doc, dict):
            # Rows without a body (a deleted doc on some servers): a tombstone.
            changes = row.get("changes") or [{}]
            doc = {"_id": doc_id, "_rev": changes[0].get("rev"), "_deleted": True}
        leaves = tuple(c["rev"] for c in row.get("changes") or [] if isinstance(c, dict) and "rev" in c)
        self.index.apply(doc, row.get("seq"), leaves=leaves)
        if doc_id == "settings":
            self.settings = AppSettings.from_doc(None if doc.get("_deleted") else doc)
            self.index.set_person_types(self.settings.person_types)
        elif doc_id.startswith(USER_PREFIX) and self.on_user_change is not None:
            self.on_user_change(doc_id[len(USER_PREFIX) :])

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
