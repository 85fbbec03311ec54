"""Issue 11, item 3: headers cannot lie.

No client header that CouchDB could take for authentication (`X-Auth-CouchDB-*` under any
configured name) or for its own address reaches CouchDB, from any caller; `X-Forwarded-*`
are couchgate's own view of the client, and inbound forwarding headers count only from
the proxies named in COUCHGATE_TRUSTED_PROXIES. The backend's own `_show` function reports
what it received.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from identity_support import ECHO_PATH, install_echo, new_user, token_of

from proxy.app import create_app
from proxy.devserver.backend import PouchServer
from proxy.forward.relay import FORWARDED_REQUEST_HEADERS, upstream_request_headers

from support import (
    Gateway,
    TestUser,
    audit_entries,
    audited_gateway,
    basic,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

LIES = {
    "X-Auth-CouchDB-UserName": "admin",
    "X-Auth-CouchDB-Roles": "_admin",
    "X-Auth-CouchDB-Token": "0" * 40,
    "X-Remote-User": "admin",  # what a CouchDB configured with other header names might read
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Ssl": "on",
    "Forwarded": "for=6.6.6.6;host=evil.example;proto=https",
    "X-Real-IP": "6.6.6.6",
}


def received(body: Any) -> dict[str, str]:
    assert isinstance(body, dict), body
    return {k.lower(): v for k, v in body.items()}


def assert_nothing_lied(seen: dict[str, str]) -> None:
    for name in ("x-auth-couchdb-username", "x-auth-couchdb-roles", "x-auth-couchdb-token", "x-remote-user",
                 "x-forwarded-ssl", "forwarded", "x-real-ip"):  # fmt: skip
        assert name not in seen, (name, seen)
    assert seen.get("x-forwarded-for") == "127.0.0.1", seen
    assert seen.get("x-forwarded-proto") == "http", seen
    assert "x-forwarded-host" not in seen, seen  # neither configured nor from a trusted proxy


async def test_no_caller_passes_auth_or_forwarding_headers_upstream(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    install_echo(backend, db)
    user = new_user(backend)
    admin = basic(backend.admin_user, backend.admin_password)
    callers = {"basic": user.auth, "token": await token_of(gateway, user.name, user.password), "admin": admin}
    for kind, auth in callers.items():
        status, body, _ = await gateway.call("GET", f"/{db}{ECHO_PATH}", auth=auth, headers=LIES)
        assert status == 200, (kind, body)
        seen = received(body)
        assert_nothing_lied(seen)
        assert seen.get("accept") == "application/json"  # what CouchDB's protocol needs still goes


async def test_a_cookie_caller_too(gateway: Gateway, backend: PouchServer, db: str) -> None:
    install_echo(backend, db)
    user = new_user(backend)
    async with gateway.http.post(
        f"{gateway.url}/_session", json={"name": user.name, "password": user.password}
    ) as r:
        cookie = r.headers["Set-Cookie"].split(";", 1)[0]
    status, body, _ = await gateway.call("GET", f"/{db}{ECHO_PATH}", headers={"Cookie": cookie, **LIES})
    assert status == 200, body
    assert_nothing_lied(received(body))


def test_every_forwarding_path_builds_headers_the_same_way() -> None:
    """Offline users' reads, `/_session` and anonymous requests are forwarded through the
    same function: whatever the credentials, none of the client's lies are in it."""
    app = create_app(gateway_settings(PouchServer(port=1), "medic"))
    request = make_mocked_request("GET", "/medic/doc/att", headers={**LIES, "Accept": "*/*"}, app=app)
    for credentials in ({"Authorization": "Basic c2VydmljZTpwdw=="}, {}, {"Cookie": "AuthSession=x"}):
        headers = upstream_request_headers(request, credentials)
        names = {k.lower() for k in headers}
        assert names <= FORWARDED_REQUEST_HEADERS | {"authorization", "cookie", "x-forwarded-for",
                                                     "x-forwarded-proto"}, names  # fmt: skip
        assert "x-auth-couchdb-roles" not in names and "x-forwarded-host" not in names


@pytest.fixture
async def behind_proxy(backend: PouchServer, db: str) -> Any:
    async with audited_gateway(backend, db, trusted_proxies=("127.0.0.1/32",)) as gw:
        yield gw


async def test_forwarding_headers_of_a_trusted_proxy_are_used(
    behind_proxy: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    install_echo(backend, db)
    alice = users["alice"].auth
    # The client wrote the first entry; the trusted proxy (the peer) appended the real one.
    hops = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "couchgate.example.org"}  # fmt: skip
    status, body, _ = await behind_proxy.call("GET", f"/{db}{ECHO_PATH}", auth=alice, headers=hops)
    assert status == 200, body
    seen = received(body)
    assert seen["x-forwarded-for"] == "203.0.113.7"
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-host"] == "couchgate.example.org"
    status, body, headers = await behind_proxy.call("POST", f"/{db}", auth=alice, json={"a": 1}, headers=hops)
    assert status == 201, body
    assert headers["Location"].startswith("https://couchgate.example.org/"), headers.get("Location")
    entries = await audit_entries(behind_proxy, backend, f"&doc={body['id']}")
    assert [e["client"] for e in entries] == ["203.0.113.7"]
    # Garbage from the proxy's client cannot pose as the address either.
    status, body, _ = await behind_proxy.call(
        "GET", f"/{db}{ECHO_PATH}", auth=alice, headers={"X-Forwarded-For": "not-an-ip, 203.0.113.8"}
    )
    assert received(body)["x-forwarded-for"] == "203.0.113.8"


async def test_forwarding_headers_of_anyone_else_are_not(backend: PouchServer, db: str) -> None:
    install_echo(backend, db)
    gw = await start_gateway(gateway_settings(backend, db, trusted_proxies=("10.0.0.0/8",)))
    try:
        alice = basic("alice", "alice-pass")
        status, body, _ = await gw.call("GET", f"/{db}{ECHO_PATH}", auth=alice, headers=LIES)
        assert status == 200, body
        assert_nothing_lied(received(body))
    finally:
        await stop_gateway(gw)


async def test_public_url_is_the_forwarded_host(backend: PouchServer, db: str) -> None:
    install_echo(backend, db)
    gw = await start_gateway(gateway_settings(backend, db, public_url="https://sync.example.org"))
    try:
        status, body, _ = await gw.call(
            "GET", f"/{db}{ECHO_PATH}", auth=basic("alice", "alice-pass"), headers=LIES
        )
        seen = received(body)
        assert status == 200 and seen["x-forwarded-host"] == "sync.example.org", seen
        assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-for"] == "127.0.0.1"
    finally:
        await stop_gateway(gw)
