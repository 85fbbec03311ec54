"""Bearer tokens follow their user: a token is honoured only while, as CouchDB knows it now,

- its user exists (a `_users` doc, or a server admin in CouchDB's config);
- the user still holds every role the token grants (a demoted admin loses `_admin`);
- the user's password is the one the token was issued under (couchgate's tokens carry a
  fingerprint of it, see `proxy.auth.users.credential_of`);
- it was issued after the user's last logout (`DELETE /_session`) or revocation
  (`POST /_couchgate/token/revoke`), kept as a "not before" time in `COUCHGATE_AUTH_DB`, so
  every replica and every restart sees it.

What CouchDB says is trusted for at most `COUCHGATE_AUTH_CACHE_SECONDS` (per user; a
revocation made by this process applies here at once). Every read fails closed: a token
whose user cannot be checked is not honoured (503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proxy.auth.tokens import TokenClaims
from proxy.auth.users import UserInfoCache, credential_of
from proxy.couch.client import CouchClient, quote_id
from proxy.errors import Unauthorized, UpstreamError, UpstreamUnavailable

REVOKED_PREFIX = "revoked:"
ADMIN_ONLY = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["_admin"]}}
# CouchDB 3 keeps its config under `/_node/_local/_config`; older servers and pouchdb-server at `/_config`.
CONFIG_PATHS = ("/_node/_local/_config", "/_config")


class TokenRefused(Unauthorized):
    """A well-signed token that its user's current state no longer backs."""


@dataclass(frozen=True)
class Account:
    exists: bool
    roles: frozenset[str]
    credential: str


class TokenGuard:
    def __init__(self, couch: CouchClient, users: UserInfoCache, auth_db: str, ttl: float) -> None:
        self.couch = couch
        self.users = users
        self.db_path = "/" + quote(auth_db, safe="")
        self.ttl = ttl
        self._admins: dict[str, tuple[float, str | None]] = {}
        self._not_before: dict[str, tuple[float, int]] = {}
        self._config: str | None = None  # which of CONFIG_PATHS this CouchDB answers

    async def check(self, claims: TokenClaims) -> None:
        """Raise `TokenRefused` unless the token's user still backs it."""
        account = await self.account(claims.name)
        if not account.exists:
            raise TokenRefused("the token's user no longer exists")
        if not set(claims.roles) <= account.roles:
            raise TokenRefused("the token grants roles its user no longer has")
        if claims.credential is not None and claims.credential != account.credential:
            raise TokenRefused("the user's password changed after the token was issued")
        not_before = await self.not_before(claims.name)
        if not_before and claims.issued_ms <= not_before:
            raise TokenRefused("the token was revoked (logout or revocation)")

    async def account(self, name: str, *, fresh: bool = False) -> Account:
        """The user as CouchDB knows it (`fresh`: now, else at most the cache time ago)."""
        admin_hash = await self._admin_hash(name, fresh)
        info = await self.users.get(name, fresh=fresh)
        roles = set(info.roles)
        if admin_hash is not None:
            # CouchDB checks its admins before `_users`: their config password is the one that counts.
            return Account(True, frozenset({*roles, "_admin"}), credential_of(name, admin_hash))
        return Account(info.account, frozenset(roles), info.credential)

    async def _admin_hash(self, name: str, fresh: bool) -> str | None:
        now = time.monotonic()
        hit = self._admins.get(name)
        if hit is not None and hit[0] > now and not fresh:
            return hit[1]
        value = await self._read_admin(name)
        _bounded(self._admins)
        self._admins[name] = (now + self.ttl, value)
        return value

    async def _read_admin(self, name: str) -> str | None:
        for config in (self._config,) if self._config else CONFIG_PATHS:
            result = await self.couch.json("GET", f"{config}/admins/{quote(name, safe='')}")
            if result.status >= 500:
                raise UpstreamUnavailable("couchgate could not read CouchDB's server admins")
            if result.status == 200 and isinstance(result.body, str):
                self._config = config
                return result.body
            if result.status == 404 and _reason(result.body) == "unknown_config_value":
                self._config = config
                return None
        raise UpstreamError("couchgate cannot read CouchDB's server admins (is the service account one?)")

    async def not_before(self, name: str) -> int:
        """Tokens of `name` issued at or before this time (ms since the epoch) are revoked."""
        now = time.monotonic()
        hit = self._not_before.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await self.couch.json("GET", self._doc_path(name))
        if result.status == 404:
            value = 0
        elif result.ok and isinstance(result.body, dict):
            value = _millis(result.body.get("not_before_ms"))
        else:
            raise UpstreamUnavailable("couchgate could not read the token revocations")
        _bounded(self._not_before)
        self._not_before[name] = (now + self.ttl, value)
        return value

    async def revoke(self, name: str) -> int:
        """End every token of `name` issued until now; the time recorded (ms)."""
        now_ms = time.time_ns() // 1_000_000
        path = self._doc_path(name)
        for _ in range(5):
            current = await self.couch.json("GET", path)
            if current.status >= 500:
                break
            doc = current.body if current.ok and isinstance(current.body, dict) else {}
            value = max(_millis(doc.get("not_before_ms")), now_ms)
            new = {**doc, "_id": REVOKED_PREFIX + name, "type": "token_revocation", "name": name,
                   "not_before_ms": value}  # fmt: skip
            written = await self.couch.json("PUT", path, body=new)
            if written.ok:
                self._not_before[name] = (time.monotonic() + self.ttl, value)
                return value
            if written.status == 404:
                await self._create_db()
            elif written.status != 409:  # 409: another replica wrote it meanwhile; read again
                break
        raise UpstreamUnavailable("couchgate could not record the revocation; the tokens are still valid")

    async def _create_db(self) -> None:
        created = await self.couch.json("PUT", self.db_path)
        if created.status not in (201, 202, 412):
            raise UpstreamUnavailable("couchgate could not create its revocation database")
        security = await self.couch.json("PUT", f"{self.db_path}/_security", body=ADMIN_ONLY)
        if not security.ok:
            raise UpstreamUnavailable("couchgate could not protect its revocation database")

    def _doc_path(self, name: str) -> str:
        return f"{self.db_path}/{quote_id(REVOKED_PREFIX + name)}"


def _reason(body: object) -> object:
    return body.get("reason") if isinstance(body, dict) else None


def _millis(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _bounded(cache: dict[str, Any]) -> None:
    if len(cache) > 50_000:
        cache.clear()
