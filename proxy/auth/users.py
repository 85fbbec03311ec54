"""Facility and contact of a user, from its `_users` doc and its `user-settings` doc."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from urllib.parse import quote

from cachetools import TTLCache

from proxy.auth.principal import as_tuple
from proxy.couch.client import CouchClient, JsonResult
from proxy.errors import UpstreamUnavailable

# Users whose docs are kept at most (the least recently used go first): far more than use
# couchgate within one TTL, so only a burst of new names (a password spray) evicts anyone.
USERS_KEPT = 50_000
# The fields of a `_users` doc that change exactly when its password does.
CREDENTIAL_FIELDS = ("password_scheme", "pbkdf2_prf", "iterations", "salt", "derived_key", "password_sha")


@dataclass(frozen=True)
class UserInfo:
    facility_ids: tuple[str, ...] = ()
    contact_id: str | None = None
    roles: tuple[str, ...] = ()
    exists: bool = False
    account: bool = False  # the `_users` doc exists
    credential: str = ""  # a fingerprint of its password fields (see `credential_of`)


class UserInfoCache:
    """Reads both docs with the service account (together); cached for a short time. The
    requests that need a user while their docs are being read share that read, unless the
    user changed since it began (`invalidate`, from the index follower): then they read
    again, and the older read is not cached."""

    def __init__(self, couch: CouchClient, db: str, ttl: float, kept: int = USERS_KEPT) -> None:
        self.couch = couch
        self.db = db
        self.ttl = ttl
        self._cache: TTLCache[str, UserInfo] = TTLCache(maxsize=kept, ttl=ttl, timer=time.monotonic)
        self._reading: dict[str, asyncio.Future[UserInfo]] = {}
        self._changes = 0  # invalidations so far: a read begun before one is not cached

    def invalidate(self, name: str | None = None) -> None:
        self._changes += 1
        if name is None:
            self._cache.clear()
            self._reading.clear()
        else:
            self._cache.pop(name, None)
            self._reading.pop(name, None)

    async def get(self, name: str, *, fresh: bool = False) -> UserInfo:
        """`fresh`: read CouchDB now, whatever the cache holds or is reading."""
        hit = self._cache.get(name)
        if hit is not None and not fresh:
            return hit
        if fresh:
            return await self._read(name)
        return await asyncio.shield(self._reading.get(name) or self._start(name))

    def prefetch(self, name: str) -> None:
        """Begin reading a user's docs unless they are cached or being read: the caller
        will `get` them shortly (while the user's password is checked, so that a request
        does not wait for the two reads one after the other)."""
        if name not in self._cache and name not in self._reading:
            self._start(name)

    def _start(self, name: str) -> asyncio.Future[UserInfo]:
        reading = asyncio.ensure_future(self._read(name))
        self._reading[name] = reading
        reading.add_done_callback(lambda done: self._read_done(name, done))
        return reading

    def _read_done(self, name: str, done: asyncio.Future[UserInfo]) -> None:
        if self._reading.get(name) is done:
            del self._reading[name]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone

    async def _read(self, name: str) -> UserInfo:
        changes = self._changes
        doc_id = quote(f"org.couchdb.user:{name}", safe="")
        user_doc, settings_doc = await asyncio.gather(
            self.couch.json("GET", f"/_users/{doc_id}"),
            self.couch.json("GET", f"/{quote(self.db, safe='')}/{doc_id}"),
        )
        _readable(user_doc)
        _readable(settings_doc)
        info = merge_user_docs(
            user_doc.body if user_doc.ok else None, settings_doc.body if settings_doc.ok else None
        )
        if changes == self._changes:
            self._cache[name] = info
        return info


def merge_user_docs(user_doc: object, settings_doc: object) -> UserInfo:
    """The `_users` doc wins; the `user-settings` doc fills what it lacks (a doc of another
    type under its id counts for nothing: an offline user could once plant one)."""
    facility: tuple[str, ...] = ()
    contact: str | None = None
    roles: tuple[str, ...] = ()
    if isinstance(settings_doc, dict) and settings_doc.get("type") != "user-settings":
        settings_doc = None  # any other doc under that id is no one's settings (W2 refuses them)
    for doc in (user_doc, settings_doc):
        if not isinstance(doc, dict):
            continue
        if not facility:
            facility = as_tuple(doc.get("facility_id"))
        if contact is None and isinstance(doc.get("contact_id"), str) and doc["contact_id"]:
            contact = doc["contact_id"]
        if not roles and doc is user_doc:
            roles = as_tuple(doc.get("roles"))
    exists = isinstance(user_doc, dict) or isinstance(settings_doc, dict)
    account = isinstance(user_doc, dict)
    return UserInfo(
        facility_ids=facility,
        contact_id=contact,
        roles=roles,
        exists=exists,
        account=account,
        credential=credential_of(str(user_doc.get("name")), user_doc) if isinstance(user_doc, dict) else "",
    )


def _readable(result: JsonResult) -> JsonResult:
    """Fail closed: a user doc CouchDB could not read is no answer at all (503), never "no
    such user", which would hand out a user's rights without their facility."""
    if result.status >= 500:
        raise UpstreamUnavailable("couchgate could not read the user's documents")
    return result


def credential_of(name: str, source: object) -> str:
    """A fingerprint of what a user logs in with: the password fields of a `_users` doc, or
    a server admin's hashed password (a string from CouchDB's config). It changes exactly
    when the password does; it includes the random salt, so it tells nothing about the
    password itself."""
    if isinstance(source, dict):
        parts = [str(source.get(field, "")) for field in CREDENTIAL_FIELDS]
    else:
        parts = ["admin", str(source)]
    return hashlib.sha256("\0".join([name, *parts]).encode()).hexdigest()[:32]
