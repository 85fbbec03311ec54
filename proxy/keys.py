"""Typed keys for everything kept on the application and on a request."""

from __future__ import annotations

from aiohttp import web

from proxy.audit.api import AuditSink
from proxy.auth.authenticator import Authenticator
from proxy.auth.principal import Principal
from proxy.auth.throttle import LoginThrottle
from proxy.auth.token_guard import TokenGuard
from proxy.auth.tokens import TokenService
from proxy.auth.users import UserInfoCache
from proxy.couch.backend_kind import BackendKind
from proxy.couch.client import CouchClient
from proxy.couch.security_cache import SecurityCache
from proxy.offline.since import SinceCodec
from proxy.offline.sync import IndexSync
from proxy.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
COUCH = web.AppKey("couch", CouchClient)
BACKEND_KIND = web.AppKey("backend_kind", BackendKind)
USERS = web.AppKey("users", UserInfoCache)
TOKENS = web.AppKey("tokens", TokenService)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
THROTTLE = web.AppKey("throttle", LoginThrottle)
TOKEN_GUARD = web.AppKey("token_guard", TokenGuard)
SECURITY = web.AppKey("security", SecurityCache)
AUDIT = web.AppKey("audit", AuditSink)
INDEX = web.AppKey("index", IndexSync)
SINCE_CODEC = web.AppKey("since_codec", SinceCodec)
SINCE_KEY = web.AppKey("since_key", bytes)  # the secret behind since tokens and made-up revisions

PRINCIPAL = web.RequestKey("principal", Principal)
