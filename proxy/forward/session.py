"""`/_session`: CouchDB's own, forwarded, with couchgate's part in it. A token caller's
`GET` is answered here (CouchDB cannot know the token); a logout ends the user's tokens
too; a login is throttled (`proxy.auth.throttle`) and audited, and only the name and
password couchgate read are sent on.

It forwards, so it lives in the forwarding wing (`proxy.forward`), above `proxy.auth`."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.audit.api import Outcome
from proxy.audit.recorder import record
from proxy.auth.routes import MAX_LOGIN_BODY, login_fields, throttled
from proxy.clients import client_address
from proxy.errors import BadRequest, json_response
from proxy.forward.acting import credentials_for
from proxy.forward.relay import forward, parse_path
from proxy.keys import CALLER, THROTTLE, TOKEN_GUARD
from proxy.methods import refuse_unknown_method
from proxy.params import read_body


async def session(request: web.Request) -> web.StreamResponse:
    """CouchDB's `/_session`; a token caller's `GET` is answered here, CouchDB cannot know it."""
    refuse_unknown_method(request)  # TRACE and the like: 405, as CouchDB answers them
    principal = request[CALLER].principal
    if principal.method == "jwt" and request.method in {"GET", "HEAD"}:
        return json_response(
            {
                "ok": True,
                "userCtx": {"name": principal.name, "roles": list(principal.roles)},
                "info": {"authentication_handlers": ["jwt", "cookie", "default"], "authenticated": "jwt"},
            }
        )
    path = parse_path(request)
    credentials, check = await credentials_for(request, principal, path)
    if request.method == "DELETE" and principal.name is not None:
        # A logout ends the user's tokens too (issued before it, on every replica).
        await request.app[TOKEN_GUARD].revoke(principal.name)
        record(request, "token_revoke", "success", details={"name": principal.name, "by": "logout"})
    if request.method != "POST":
        return await forward(request, path, credentials, check=check)
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
