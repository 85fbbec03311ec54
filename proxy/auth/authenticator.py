"""Turns a request's credentials into a `Principal`.

Order: `Authorization: Bearer` (JWT), `Authorization: Basic` (checked against CouchDB's
`GET /_session` with the caller's own credentials), the `AuthSession` cookie (likewise),
else anonymous. Verified basic and cookie credentials are cached briefly under a hash, so
a replication's many requests cost one upstream check; requests that bring a Basic
credential while it is being checked share that check, and the user's docs (facility,
contact) are read beside it rather than after it answered.

An `Authorization` header CouchDB could not read (another scheme, `Basic:` with a colon,
Basic without a name, bearer tokens while they are off) is no credential, as in CouchDB:
the caller is anonymous, which public routes answer and private ones refuse with 401.
Wrong passwords count towards the login throttle (`proxy.auth.throttle`); a cached
success is a match of the whole credential, so it never lets another password through.
Bearer tokens are checked against their user's current state (`proxy.auth.token_guard`).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import time
from base64 import b64decode
from http.cookies import CookieError, SimpleCookie

from cachetools import TTLCache

from proxy import observe
from proxy.auth.principal import ANONYMOUS, AuthMethod, Principal
from proxy.auth.throttle import LoginThrottle, LoginThrottled
from proxy.auth.token_guard import TokenGuard, TokenRefused
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


CREDENTIALS_KEPT = 50_000
# A Basic challenge would make browsers pop up their own login box over a PouchDB app, so
# every 401 carries a Bearer challenge, as RFC 9110 asks for, and nothing else.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="couchgate"'}


class Authenticator:
    def __init__(
        self,
        couch: CouchClient,
        users: UserInfoCache,
        tokens: TokenService,
        cache_seconds: float,
        throttle: LoginThrottle,
        guard: TokenGuard,
    ) -> None:
        self.couch = couch
        self.users = users
        self.tokens = tokens
        self.cache_seconds = cache_seconds
        self.throttle = throttle
        self.guard = guard
        # Credentials checked lately, by hash (the least recently used go first past the bound).
        self._cache: TTLCache[str, tuple[str | None, tuple[str, ...]]] = TTLCache(
            maxsize=CREDENTIALS_KEPT, ttl=cache_seconds, timer=time.monotonic
        )
        self._checking: dict[str, asyncio.Future[tuple[str | None, tuple[str, ...]]]] = {}

    async def authenticate(
        self,
        authorization: str | None,
        cookie_header: str | None,
        client: str | None = None,
        *,
        user_docs: bool = True,
    ) -> Principal:
        """The caller; `client` is its address (for the login throttle). `user_docs`: the
        request needs the user's facility and contact (all but CouchDB's welcome do); without,
        the principal names none, and a read of the user's docs begun for it goes on for the
        requests that follow."""
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer" and self.tokens.enabled:
                return await self._bearer(credentials.strip(), user_docs)
            basic = parse_basic(credentials) if scheme == "basic" else None
            if basic is not None:
                return await self._basic(authorization, basic[0], basic[1], client, user_docs)
        session = auth_session_cookie(cookie_header)
        if session is not None:
            return await self._cookie(session, client, user_docs)
        return ANONYMOUS

    async def _bearer(self, token: str, user_docs: bool) -> Principal:
        try:
            claims = self.tokens.verify(token)
        except TokenError as exc:
            raise AuthFailed(str(exc), headers=bearer_challenge(str(exc))) from exc
        try:
            await self.guard.check(claims)
        except TokenRefused as exc:  # well signed, but its user no longer backs it
            raise AuthFailed(exc.reason, headers=bearer_challenge(exc.reason)) from exc
        return await self._principal(claims.name, claims.roles, "jwt", (), user_docs)

    async def _basic(
        self, header: str, name: str, password: str, client: str | None, user_docs: bool
    ) -> Principal:
        key = self._key("basic", header)
        hit = self._cached(key)
        if hit is None:
            # Requests that arrive with the same credential while it is being checked wait
            # for that one check: one attempt, as the throttle counts it (an app's parallel
            # first requests are not a burst of guesses), and one upstream call.
            check = self._checking.get(key)
            if check is None:
                check = asyncio.ensure_future(self._check_basic(key, header, name, password, client))
                self._checking[key] = check
                check.add_done_callback(lambda done: self._checked(key, done))
            hit = await asyncio.shield(check)
        user, roles = hit
        return await self._principal(user, roles, "basic", (("Authorization", header),), user_docs)

    def _checked(self, key: str, check: asyncio.Future[tuple[str | None, tuple[str, ...]]]) -> None:
        if self._checking.get(key) is check:
            del self._checking[key]
        if not check.cancelled():
            check.exception()  # retrieved: every waiter may have gone

    async def _check_basic(
        self, key: str, header: str, name: str, password: str, client: str | None
    ) -> tuple[str | None, tuple[str, ...]]:
        wait = self.throttle.admit(name, client, password)
        if wait is not None:
            observe.auth_throttled()  # metrics
            raise LoginThrottled(name, wait)
        if name:
            self.users.prefetch(name)  # read beside the password check (`_principal` needs them)
        try:
            user, roles = await session_user(self.couch, {"Authorization": header}, client)
        except BaseException:
            self.throttle.release(name, client)  # no answer on the password
            raise
        if user is None and "_admin" not in roles:
            self.throttle.failed(name, client, password)
            raise AuthFailed("Name or password is incorrect.", headers=CHALLENGE)
        self.throttle.succeeded(name, password, client)
        self._remember(key, user, roles)
        return user, roles

    async def _cookie(self, session: str, client: str | None, user_docs: bool) -> Principal:
        cookie = f"AuthSession={session}"
        key = self._key("cookie", cookie)
        hit = self._cached(key)
        if hit is None:
            hit = await session_user(self.couch, {"Cookie": cookie}, client)
            self._remember(key, *hit)
        user, roles = hit
        if user is None and "_admin" not in roles:
            # CouchDB treats an expired or forged session as no session at all.
            return ANONYMOUS
        return await self._principal(user, roles, "cookie", (("Cookie", cookie),), user_docs)

    @staticmethod
    def _key(kind: str, credential: str) -> str:
        return hashlib.sha256((kind + "\0" + credential).encode()).hexdigest()

    def _cached(self, key: str) -> tuple[str | None, tuple[str, ...]] | None:
        return self._cache.get(key)

    def _remember(self, key: str, name: str | None, roles: tuple[str, ...]) -> None:
        """Only successes are cached: a refused credential is asked about (and counted) again."""
        if name is None and "_admin" not in roles:
            return
        self._cache[key] = (name, roles)

    async def _principal(
        self,
        name: str | None,
        roles: tuple[str, ...],
        method: AuthMethod,
        upstream: tuple[tuple[str, str], ...],
        user_docs: bool = True,
    ) -> Principal:
        facility: tuple[str, ...] = ()
        contact: str | None = None
        if user_docs and name is not None and "_admin" not in roles:
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


def parse_basic(credentials: str) -> tuple[str, str] | None:
    """(name, password) of Basic credentials, or None when CouchDB could not read them."""
    try:
        name, sep, password = b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not sep:
        return None  # CouchDB reads no credential here; an empty name is a (wrong) one
    return name, password


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
    CouchDB refuses them. A CouchDB that cannot answer is 503, never "wrong password".

    `client`: the caller's address, sent as `X-Forwarded-For`. CouchDB 3.4 locks an account
    out after failed logins per (address, name), reading the address from that header when
    the request comes from a local or private address (couchgate's): so the lockout hits
    the guesser, not every user behind couchgate. Its refusal is passed on (403)."""
    sent = {**headers, "X-Forwarded-For": client} if client else headers
    result = await couch.json("GET", "/_session", headers=sent, use_service=False)
    if result.status >= 500:
        raise UpstreamUnavailable("CouchDB could not check the credentials")
    if result.status == 403 and isinstance(result.body, dict):
        raise Forbidden(str(result.body.get("reason") or "the account is locked"))
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
