"""Issue 11, item 2, with CouchDB 3.4's own lockout: CouchDB locks an account after failed
logins per (address, name), and reads the address from `X-Forwarded-For` when the request
comes from a local or private address, as couchgate's do. So couchgate's credential checks
carry the client's address: a stranger guessing at a CHW's name locks out the stranger,
not every user behind couchgate (checked by hand against CouchDB 3.4.3, docs/security.md).

pouchdb-server has no lockout and cannot show the headers it received on `/_session`: a
tap between couchgate and the real backend records them, and injects CouchDB's lockout
answer for one user (a fault the test backend cannot be made to show).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from identity_support import new_user

from proxy.devserver.backend import PouchServer

from support import Gateway, assert_couch_error, basic, gateway_settings, start_gateway, stop_gateway

LOCKED = {
    "error": "forbidden",
    "reason": "Account is temporarily locked due to multiple authentication failures",
}


def basic_name(header: str) -> str:
    return base64.b64decode(header.split(" ", 1)[1]).decode().partition(":")[0]


@pytest.fixture
async def tapped(backend: PouchServer, db: str) -> AsyncIterator[tuple[Gateway, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    http = aiohttp.ClientSession(auto_decompress=False)

    async def tap(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if request.path == "/_session":
            seen.append({k.lower(): v for k, v in request.headers.items()})
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Basic ") and basic_name(auth).startswith("locked"):
                return web.json_response(LOCKED, status=403)
        async with http.request(
            request.method,
            backend.url + request.rel_url.raw_path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "set-cookie")}
            return web.Response(status=upstream.status, body=body, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", tap)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = gateway_settings(backend, db, couch_url=f"http://127.0.0.1:{server.port}", auth_cache_seconds=0,
                                trusted_proxies=("127.0.0.2/32",))  # fmt: skip
    gw = await start_gateway(settings)
    try:
        yield gw, seen
    finally:
        await stop_gateway(gw)
        await server.close()
        await http.close()


async def test_credential_checks_carry_the_clients_address(
    tapped: tuple[Gateway, list[dict[str, str]]], backend: PouchServer, db: str
) -> None:
    gw, seen = tapped
    user = new_user(backend)
    checks: list[Any] = []
    for auth, extra in ((user.auth, {}), (basic(user.name, "wrong"), {"X-Forwarded-For": "6.6.6.6"})):
        seen.clear()
        await gw.call("GET", f"/{db}", auth=auth, headers=extra)
        checks += [entry.get("x-forwarded-for") for entry in seen]
    status, _, _ = await gw.call(
        "POST", "/_couchgate/token", json={"name": user.name, "password": user.password}
    )
    assert status == 200
    checks += [entry.get("x-forwarded-for") for entry in seen[-1:]]
    # Always couchgate's view of the client (127.0.0.1 is not a trusted proxy here), never the client's claim.
    assert checks and set(checks) == {"127.0.0.1"}, checks


async def test_couchdbs_lockout_is_passed_on_and_not_counted(
    tapped: tuple[Gateway, list[dict[str, str]]], backend: PouchServer, db: str
) -> None:
    gw, _ = tapped
    for _ in range(8):  # more than the free failures: none of them is counted as one
        status, body, _ = await gw.call("GET", f"/{db}", auth=basic("locked-chw", "any"))
        assert (status, body) == (403, LOCKED)
    status, body, _ = await gw.call("POST", "/_couchgate/token", json={"name": "locked-chw", "password": "x"})
    assert (status, body) == (403, LOCKED)
    user = new_user(backend)
    status, _, _ = await gw.call("GET", f"/{db}", auth=user.auth)
    assert status == 200
    status, body, _ = await gw.call("GET", f"/{db}", auth=basic(user.name, "wrong"))
    assert_couch_error(status, body, 401, "unauthorized")
