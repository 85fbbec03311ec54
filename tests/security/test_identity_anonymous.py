"""An `Authorization` header CouchDB cannot read is no credential (as in CouchDB 3.4: `Basic:`
with a colon, another scheme, bearer tokens while they are off): public routes answer the
caller as anonymous, private ones keep their 401. A wrong password stays a 401 everywhere."""

from __future__ import annotations

import base64

import pytest

from proxy.devserver.backend import PouchServer

from support import Gateway, TestUser, assert_couch_error, gateway_settings, start_gateway, stop_gateway

UNREADABLE = [
    "Basic: " + base64.b64encode(b"alice:alice-pass").decode(),
    "Digest username=alice",
    "Negotiate abc",
    "Basic %%%not-base64",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic",
    "",
]


@pytest.mark.parametrize("header", UNREADABLE)
async def test_unreadable_authorization_is_anonymous(gateway: Gateway, db: str, header: str) -> None:
    status, body, _ = await gateway.call("GET", "/", headers={"Authorization": header})
    assert status == 200 and ("express-pouchdb" in body or "couchdb" in body), (status, body)
    status, body, _ = await gateway.call("GET", "/_session", headers={"Authorization": header})
    assert status == 200 and body["userCtx"]["name"] is None, body
    status, body, headers = await gateway.call("GET", f"/{db}", headers={"Authorization": header})
    assert_couch_error(status, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_wrong_password_is_refused_even_on_public_routes(
    gateway: Gateway, users: dict[str, TestUser]
) -> None:
    for credentials in (b"alice:wrong", b":no-name"):
        wrong = "Basic " + base64.b64encode(credentials).decode()
        status, body, _ = await gateway.call("GET", "/", headers={"Authorization": wrong})
        assert_couch_error(status, body, 401, "unauthorized")


async def test_bearer_while_tokens_are_off_is_anonymous(backend: PouchServer, db: str) -> None:
    gw = await start_gateway(gateway_settings(backend, db, jwt_secret=None))
    try:
        status, body, _ = await gw.call("GET", "/", headers={"Authorization": "Bearer whatever"})
        assert status == 200, body
        status, body, _ = await gw.call("GET", f"/{db}", headers={"Authorization": "Bearer whatever"})
        assert_couch_error(status, body, 401, "unauthorized")
    finally:
        await stop_gateway(gw)


async def test_unreadable_authorization_falls_back_to_the_session_cookie(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"]
    async with gateway.http.post(
        f"{gateway.url}/_session", json={"name": alice.name, "password": alice.password}
    ) as resp:
        cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
    status, body, _ = await gateway.call(
        "GET", f"/{db}", headers={"Authorization": "Digest x", "Cookie": cookie}
    )
    assert status == 200, body
