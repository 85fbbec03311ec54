"""`POST /_couchgate/token` and `POST /_couchgate/token/revoke`, and what `/_session`
(`proxy.forward.session`, which forwards) shares with them: reading a login, the login throttle."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from aiohttp import web

from proxy import observe
from proxy.audit.recorder import record
from proxy.auth.authenticator import CHALLENGE, check_password
from proxy.auth.throttle import LoginThrottled
from proxy.clients import client_address
from proxy.errors import BadRequest, Forbidden, NotImplementedHere, Unauthorized, json_response
from proxy.keys import CALLER, COUCH, THROTTLE, TOKEN_GUARD, TOKENS
from proxy.params import read_body, read_json

MAX_LOGIN_BODY = 64 * 1024


async def read_login(request: web.Request) -> tuple[str, str]:
    if request.content_type == "application/x-www-form-urlencoded":
        body: object = form_fields((await read_body(request, MAX_LOGIN_BODY)).decode("utf-8", "replace"))
    else:
        body = await read_json(request, MAX_LOGIN_BODY)
    if not isinstance(body, dict):
        raise BadRequest("request body must be an object with name and password")
    name, password = body.get("name"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name:
        raise BadRequest("name and password are required strings")
    return name, password


async def issue_token(request: web.Request) -> web.Response:
    """Exchange a name and password (checked by CouchDB) for a short-lived bearer token."""
    tokens = request.app[TOKENS]
    if not tokens.can_issue:
        raise NotImplementedHere("token issuing is not configured (COUCHGATE_JWT_SECRET)")
    name, password = await read_login(request)
    throttle, client = request.app[THROTTLE], client_address(request)
    throttled(request, "token", name, client, password)
    # The password's fingerprint is read before the password is checked: if it changes in
    # between, the token carries the old one and is refused from its first use.
    try:
        account = await request.app[TOKEN_GUARD].account(name, fresh=True)
        user, roles = await check_password(request.app[COUCH], name, password, client)
    except BaseException:
        throttle.release(name, client)  # no answer on the password
        raise
    if user is None:
        throttle.failed(name, client, password)
        record(request, "token", "failure", user=name, reason="name or password incorrect")
        raise Unauthorized("Name or password is incorrect.", headers=CHALLENGE)
    throttle.succeeded(name, password, client)
    token, ttl = tokens.issue(user, roles, account.credential)
    record(request, "token", "success", user=user)
    return json_response(
        {
            "ok": True,
            "token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "name": user,
            "roles": list(roles),
        }
    )


def throttled(
    request: web.Request, action: str, name: str | None, client: str | None, password: str | None
) -> None:
    """Refuse (429, audited) a login that the throttle holds back."""
    wait = request.app[THROTTLE].admit(name, client, password)
    if wait is not None:
        observe.auth_throttled()  # metrics
        error = LoginThrottled(name, wait)
        record(request, action, "denied", user=name, reason=error.reason)
        raise error


def form_fields(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def login_fields(content_type: str, body: bytes) -> tuple[str | None, str | None]:
    """The name and password of a `POST /_session` body, as far as they can be read."""
    parsed: object
    if content_type == "application/x-www-form-urlencoded":
        parsed = form_fields(body.decode("utf-8", "replace"))
    else:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
    if not isinstance(parsed, dict):
        return None, None
    name, password = parsed.get("name"), parsed.get("password")
    return (
        name if isinstance(name, str) and name else None,
        password if isinstance(password, str) else None,
    )


async def revoke_tokens(request: web.Request) -> web.Response:
    """End the caller's bearer tokens (an admin may name another user: `{"name": ...}`)."""
    principal = request[CALLER].principal
    body = await read_json(request, MAX_LOGIN_BODY, empty={})
    if not isinstance(body, dict):
        raise BadRequest("request body must be an object")
    name = body.get("name", principal.name)
    if not isinstance(name, str) or not name:
        raise BadRequest("name must be a non-empty string")
    if name != principal.name and not principal.is_admin:
        raise Forbidden("only admins may revoke another user's tokens")
    not_before = await request.app[TOKEN_GUARD].revoke(name)
    record(request, "token_revoke", "success", details={"name": name, "by": "request"})
    return json_response({"ok": True, "name": name, "not_before_ms": not_before})
