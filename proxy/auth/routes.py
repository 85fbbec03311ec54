"""`POST /_couchgate/token`, `POST /_couchgate/token/revoke`, and couchgate's part in
`/_session`: what a token caller needs, the login throttle, and logouts ending tokens."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from aiohttp import web

from proxy import observe
from proxy.audit.api import Outcome
from proxy.audit.capture import record
from proxy.auth.authenticator import CHALLENGE, check_password
from proxy.auth.throttle import LoginThrottled
from proxy.clients import client_address
from proxy.errors import BadRequest, Forbidden, NotImplementedHere, Unauthorized, json_response
from proxy.keys import COUCH, PRINCIPAL, THROTTLE, TOKEN_GUARD, TOKENS
from proxy.methods import refuse_unknown_method
from proxy.params import read_body, read_json
from proxy.passthrough import credentials_for, forward, parse_path

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


async def session(request: web.Request) -> web.StreamResponse:
    """CouchDB's `/_session`; a token caller's `GET` is answered here, CouchDB cannot know it."""
    refuse_unknown_method(request)  # TRACE and the like: 405, as CouchDB answers them
    principal = request[PRINCIPAL]
    if principal.method == "jwt" and request.method in {"GET", "HEAD"}:
        return json_response(
            {
                "ok": True,
                "userCtx": {"name": principal.name, "roles": list(principal.roles)},
                "info": {"authentication_handlers": ["jwt", "cookie", "default"], "authenticated": "jwt"},
            }
        )
    path = parse_path(request)
    credentials = await credentials_for(request, principal, path)
    if request.method == "DELETE" and principal.name is not None:
        # A logout ends the user's tokens too (issued before it, on every replica).
        await request.app[TOKEN_GUARD].revoke(principal.name)
        record(request, "token_revoke", "success", details={"name": principal.name, "by": "logout"})
    if request.method != "POST":
        return await forward(request, path, credentials)
    body = await read_body(request, MAX_LOGIN_BODY)
    name, password = login_fields(request.content_type, body)
    if name is None or password is None:
        # Only what couchgate read is sent: a name CouchDB (or pouchdb-server) would read
        # otherwise, an array say, would not be the name the throttle counts.
        raise BadRequest("name and password are required strings")
    throttle, client = request.app[THROTTLE], client_address(request)
    throttled(request, "login", name, client, password)
    heard = False

    def answered(status: int, _: bytes) -> None:
        nonlocal heard
        heard = True
        # Never the password: only who tried and whether CouchDB accepted it.
        outcome: Outcome = "success" if status < 300 else "failure"
        record(request, "login", outcome, user=name)
        if status < 300:
            throttle.succeeded(name, password, client)
        elif status == 401:
            throttle.failed(name, client, password)
        else:
            throttle.release(name, client)

    rebuilt = orjson.dumps({"name": name, "password": password})
    try:
        return await forward(
            request,
            path,
            {**credentials, "Content-Type": "application/json"},
            body=rebuilt,
            on_answer=answered,
        )
    finally:
        if not heard:
            throttle.release(name, client)


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
    principal = request[PRINCIPAL]
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
