"""Turns a request's credentials into a `Principal`.

Order: `Authorization: Bearer` (JWT), `Authorization: Basic` (checked against CouchDB's
`GET /_session` with the caller's own credentials), the `AuthSession` cookie (likewise),
else anonymous. Verified basic and cookie credentials are cached briefly under a hash, so
a replication's many requests cost one upstream check.

Each check names the caller's address in `X-Forwarded-For`: CouchDB 3.4 locks an account
out after repeated failures per (address, name), and without it every caller would share
couchgate's address, so anyone could lock any user out everywhere.
"""

from __future__ import annotations

import binascii
import hashlib
import time
from base64 import b64decode
from http.cookies import CookieError, SimpleCookie

from proxy.auth.principal import ANONYMOUS, AuthMethod, Principal
from proxy.auth.tokens import TokenError, TokenService
from proxy.auth.users import UserInfoCache
from proxy.couch.client import CouchClient, basic_auth_header
from proxy.errors import Forbidden, Unauthorized, UpstreamUnavailable


class AuthFailed(Unauthorized):
    """Credentials were presented and are wrong."""


def bearer_challenge(detail: str) -> dict[str, str]:
    return {
        "WWW-Authenticate": f'Bearer realm="couchgate", error="invalid_token", error_description="{detail}"'
    }


# A Basic challenge would make browsers pop up their own login box over a PouchDB app, so
# every 401 carries a Bearer challenge, as RFC 9110 asks for, and nothing else.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="couchgate"'}


class Authenticator:
    def __init__(
        self, couch: CouchClient, users: UserInfoCache, tokens: TokenService, cache_seconds: float
    ) -> None:
        self.couch = couch
        self.users = users
        self.tokens = tokens
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str | None, tuple[str, ...]]] = {}

    async def authenticate(
        self, authorization: str | None, cookie_header: str | None, client: str | None = None
    ) -> Principal:
        """`client`: the caller's address, for CouchDB's lockout of repeated failures."""
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer":
                return await self._bearer(credentials.strip())
            if scheme == "basic":
                return await self._basic(authorization, credentials.strip(), client)
            raise AuthFailed("unsupported authorization scheme", headers=CHALLENGE)
        session = auth_session_cookie(cookie_header)
        if session is not None:
            return await self._cookie(session, client)
        return ANONYMOUS

    async def _bearer(self, token: str) -> Principal:
        if not self.tokens.enabled:
            raise AuthFailed("bearer tokens are not enabled", headers=bearer_challenge("not enabled"))
        try:
            claims = self.tokens.verify(token)
        except TokenError as exc:
            raise AuthFailed(str(exc), headers=bearer_challenge(str(exc))) from exc
        return await self._principal(claims.name, claims.roles, "jwt", ())

    async def _basic(self, header: str, credentials: str, client: str | None) -> Principal:
        try:
            name, sep, _ = b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise AuthFailed("malformed basic credentials", headers=CHALLENGE) from exc
        if not sep or not name:
            raise AuthFailed("malformed basic credentials", headers=CHALLENGE)
        user, roles = await self._session_check("basic", {"Authorization": header}, client)
        if user is None and "_admin" not in roles:
            raise AuthFailed("Name or password is incorrect.", headers=CHALLENGE)
        return await self._principal(user, roles, "basic", (("Authorization", header),))

    async def _cookie(self, session: str, client: str | None) -> Principal:
        cookie = f"AuthSession={session}"
        user, roles = await self._session_check("cookie", {"Cookie": cookie}, client)
        if user is None and "_admin" not in roles:
            # CouchDB treats an expired or forged session as no session at all.
            return ANONYMOUS
        return await self._principal(user, roles, "cookie", (("Cookie", cookie),))

    async def _session_check(
        self, kind: str, headers: dict[str, str], client: str | None
    ) -> tuple[str | None, tuple[str, ...]]:
        key = hashlib.sha256((kind + "\0" + next(iter(headers.values()))).encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        name, roles = await session_user(self.couch, headers, client)
        if name is not None or "_admin" in roles:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = (now + self.cache_seconds, name, roles)
        return name, roles

    async def _principal(
        self,
        name: str | None,
        roles: tuple[str, ...],
        method: AuthMethod,
        upstream: tuple[tuple[str, str], ...],
    ) -> Principal:
        facility: tuple[str, ...] = ()
        contact: str | None = None
        if name is not None and "_admin" not in roles:
            info = await self.users.get(name)
            facility, contact = info.facility_ids, info.contact_id
        return Principal(
            name=name,
            roles=roles,
            facility_ids=facility,
            contact_id=contact,
            method=method,
            upstream_headers=upstream,
        )


def auth_session_cookie(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get("AuthSession")
    return morsel.value if morsel is not None and morsel.value else None


async def session_user(
    couch: CouchClient, headers: dict[str, str], client: str | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """Who CouchDB's `GET /_session` says these credentials belong to; (None, ()) when
    CouchDB refuses them. A CouchDB that cannot answer is 503, never "wrong password";
    an account CouchDB has locked out (403) stays CouchDB's 403."""
    if client:
        headers = {**headers, "X-Forwarded-For": client}
    result = await couch.json("GET", "/_session", headers=headers, use_service=False)
    if result.status >= 500:
        raise UpstreamUnavailable("CouchDB could not check the credentials")
    if result.status == 403:
        reason = result.body.get("reason") if isinstance(result.body, dict) else None
        raise Forbidden(reason if isinstance(reason, str) else "You are not allowed to log in now.")
    ctx = result.body.get("userCtx") if result.ok and isinstance(result.body, dict) else None
    if not isinstance(ctx, dict):
        return None, ()
    name = ctx.get("name") if isinstance(ctx.get("name"), str) else None
    roles = tuple(r for r in ctx.get("roles") or [] if isinstance(r, str))
    return name, roles


async def check_password(
    couch: CouchClient, name: str, password: str, client: str | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """Name and roles when CouchDB accepts the password, else (None, ())."""
    user, roles = await session_user(couch, {"Authorization": basic_auth_header(name, password)}, client)
    if user is None and "_admin" not in roles:
        return None, ()
    return user, roles
