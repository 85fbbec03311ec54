"""`GET /` for offline users: CouchDB's welcome document, read upstream once a minute.

PouchDB asks for it at the start of every replication (the server's `uuid` is part of
the replication's id, hence of its checkpoint's). It describes the server (name, version,
uuid, features), nothing of any database or user, and changes only when CouchDB is
reconfigured or upgraded: a copy up to a minute old answers as well as a fresh one and
spares every sync a round trip upstream. Answers other than a welcome (CouchDB down or
refusing) are passed on and never kept.
"""

from __future__ import annotations

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
        self._kept: tuple[float, dict[str, Any]] | None = None

    async def answer(self) -> web.Response:
        now = time.monotonic()
        if self._kept is not None and self._kept[0] > now:
            return json_response(self._kept[1], headers={"Cache-Control": "must-revalidate"})
        result = await self.couch.json("GET", "/")
        if result.ok and isinstance(result.body, dict):
            self._kept = (now + self.ttl, result.body)
        return json_response(result.body, status=result.status, headers={"Cache-Control": "must-revalidate"})
