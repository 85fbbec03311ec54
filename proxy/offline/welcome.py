"""`GET /` for offline users: CouchDB's welcome document, read upstream once a minute.

PouchDB asks for it at the start of every replication (the server's `uuid` is part of
the replication's id, hence of its checkpoint's). It describes the server (name, version,
uuid, features), nothing of any database or user, and changes only when CouchDB is
reconfigured or upgraded: a copy up to a minute old answers as well as a fresh one and
spares every sync a round trip upstream. It is read once at start (`refresh`, beside the
index's first build), and a copy past its minute answers while a fresh one is read beside
it, up to a second minute; older, the request reads it. Answers other than a welcome
(CouchDB down or refusing) are passed on and never kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from proxy.couch.client import CouchClient
from proxy.errors import json_response

WELCOME_TTL = 60.0


class Welcome:
    def __init__(self, couch: CouchClient, ttl: float = WELCOME_TTL) -> None:
        self.couch = couch
        self.ttl = ttl
        self._kept: tuple[float, dict[str, Any]] | None = None  # (good until, the welcome)
        self._reading: asyncio.Task[None] | None = None

    async def answer(self) -> web.Response:
        now = time.monotonic()
        kept = self._kept
        if kept is not None and kept[0] > now - self.ttl:
            if kept[0] <= now and (self._reading is None or self._reading.done()):
                self._reading = asyncio.ensure_future(self.refresh())  # answered from the copy meanwhile
            return json_response(kept[1], headers={"Cache-Control": "must-revalidate"})
        result = await self.couch.json("GET", "/")
        if result.ok and isinstance(result.body, dict):
            self._kept = (now + self.ttl, result.body)
        return json_response(result.body, status=result.status, headers={"Cache-Control": "must-revalidate"})

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    async def refresh(self) -> None:
        """Read the welcome now and keep it if it is one; a failure keeps what was kept."""
        started = time.monotonic()
        with contextlib.suppress(Exception):
            result = await self.couch.json("GET", "/")
            if result.ok and isinstance(result.body, dict):
                self._kept = (started + self.ttl, result.body)
