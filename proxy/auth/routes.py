"""`POST /_couchgate/token` and the parts of `/_session` a token caller needs."""

from __future__ import annotations

from urllib.parse import parse_qs

from aiohttp import web

from proxy.auth.authenticator import CHALLENGE, check_password
from proxy.errors import BadRequest, NotImplementedHere, Unauthorized, json_response
from proxy.keys import COUCH, PRINCIPAL, TOKENS
from proxy.params import read_json
from proxy.passthrough import credentials_for, forward, parse_path

MAX_LOGIN_BODY = 64 * 1024


async def read_login(request: web.Request) -> tuple[str, str]:
    if request.content_type == "application/x-www-form-urlencoded":
        form = parse_qs((await request.content.read(MAX_LOGIN_BODY)).decode("utf-8", "replace"))
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
    user, roles = await check_password(request.app[COUCH], name, password)
    if user is None:
        raise Unauthorized("Name or password is incorrect.", headers=CHALLENGE)
    token, ttl = tokens.issue(user, roles)
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
    return await forward(request, path, await credentials_for(request, principal, path))
