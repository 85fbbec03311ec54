"""Each database's `_security` object, read with the service account and kept briefly."""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import quote

from proxy.couch.client import CouchClient
from proxy.errors import IllegalDatabaseName, NotFound, UpstreamError


class SecurityCache:
    def __init__(self, couch: CouchClient, ttl: float = 5.0) -> None:
        self.couch = couch
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Mapping[str, object]]] = {}

    async def get(self, db: str) -> Mapping[str, object]:
        now = time.monotonic()
        hit = self._cache.get(db)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await self.couch.json("GET", f"/{quote(db, safe='')}/_security")
        if result.status == 404:
            raise NotFound("Database does not exist.")
        if result.status == 400 and isinstance(result.body, dict):
            # A name CouchDB refuses: its own 400, not a broken upstream.
            raise IllegalDatabaseName(str(result.body.get("reason") or "illegal database name"))
        if not result.ok or not isinstance(result.body, dict):
            # Fail closed: an unreadable `_security` must never look like a public database.
            raise UpstreamError("couchgate could not read the database's security object")
        body = result.body
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[db] = (now + self.ttl, body)
        return body
