"""`POST /_couchgate/token` and the parts of `/_session` a token caller needs."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from aiohttp import web

from proxy.audit.api import Outcome
from proxy.audit.capture import record
from proxy.auth.authenticator import CHALLENGE, check_password
from proxy.errors import BadRequest, NotImplementedHere, Unauthorized, json_response
from proxy.keys import COUCH, PRINCIPAL, TOKENS
from proxy.params import read_body, read_json
from proxy.passthrough import credentials_for, forward, parse_path

MAX_LOGIN_BODY = 64 * 1024


async def read_login(request: web.Request) -> tuple[str, str]:
    if request.content_type == "application/x-www-form-urlencoded":
        form = parse_qs((await read_body(request, MAX_LOGIN_BODY)).decode("utf-8", "replace"))
        body: object = {k: v[0] for k, v in form.items()}
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
    user, roles = await check_password(request.app[COUCH], name, password, request.remote)
    if user is None:
        record(request, "token", "failure", user=name, reason="name or password incorrect")
        raise Unauthorized("Name or password is incorrect.", headers=CHALLENGE)
    token, ttl = tokens.issue(user, roles)
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
    if request.method != "POST":
        return await forward(request, path, credentials)
    body = await read_body(request, MAX_LOGIN_BODY)

    def answered(status: int, _: bytes) -> None:
        # Never the password: only who tried and whether CouchDB accepted it.
        outcome: Outcome = "success" if status < 300 else "failure"
        record(request, "login", outcome, user=login_name(request.content_type, body))

    return await forward(request, path, credentials, body=body, on_answer=answered)


def login_name(content_type: str, body: bytes) -> str | None:
    if content_type == "application/x-www-form-urlencoded":
        names = parse_qs(body.decode("utf-8", "replace")).get("name")
        return names[0] if names else None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    name = parsed.get("name") if isinstance(parsed, dict) else None
    return name if isinstance(name, str) else None
