"""Typed keys for everything kept on the application and on a request.

The types are named for mypy only (`TYPE_CHECKING`): this module is imported by nearly
every floor, so it imports none of them at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.audit.api import AuditSink
    from proxy.auth.authenticator import Authenticator
    from proxy.auth.caller import Caller
    from proxy.auth.throttle import LoginThrottle
    from proxy.auth.token_guard import TokenGuard
    from proxy.auth.tokens import TokenService
    from proxy.auth.users import UserInfoCache
    from proxy.couch.backend_kind import BackendKind
    from proxy.couch.client import CouchClient
    from proxy.couch.security_cache import SecurityCache
    from proxy.offline.removals import Removals
    from proxy.offline.since import SinceCodec
    from proxy.offline.sync import IndexSync
    from proxy.settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
COUCH: web.AppKey[CouchClient] = web.AppKey("couch")
BACKEND_KIND: web.AppKey[BackendKind] = web.AppKey("backend_kind")
USERS: web.AppKey[UserInfoCache] = web.AppKey("users")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("throttle")
TOKEN_GUARD: web.AppKey[TokenGuard] = web.AppKey("token_guard")
SECURITY: web.AppKey[SecurityCache] = web.AppKey("security")
AUDIT: web.AppKey[AuditSink] = web.AppKey("audit")
INDEX: web.AppKey[IndexSync] = web.AppKey("index")
SINCE_CODEC: web.AppKey[SinceCodec] = web.AppKey("since_codec")
REMOVALS: web.AppKey[Removals] = web.AppKey("removals")
SINCE_KEY: web.AppKey[bytes] = web.AppKey("since_key")  # the secret behind since tokens and made-up revisions

# Who is calling, resolved once after authentication (proxy/auth/caller.py).
CALLER: web.RequestKey[Caller] = web.RequestKey("caller")
