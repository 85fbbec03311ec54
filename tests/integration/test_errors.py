"""Error shapes, request ids, CORS, and the upstream going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from proxy.devserver.backend import PouchServer

from support import (
    Gateway,
    TestUser,
    assert_couch_error,
    basic,
    gateway_settings,
    start_gateway,
    stop_gateway,
)


async def test_request_id_is_echoed_or_generated(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    _, _, headers = await gateway.call(
        "GET", f"/{db}", auth=users["alice"].auth, headers={"X-Request-ID": "abc-123"}
    )
    assert headers["X-Request-ID"] == "abc-123"
    _, _, headers = await gateway.call("GET", f"/{db}/_all_docs")  # an error answer carries one too
    assert len(headers["X-Request-ID"]) == 32
    _, _, headers = await gateway.call("GET", "/", headers={"X-Request-ID": "bad id with spaces\u2603"})
    assert headers["X-Request-ID"] != "bad id with spaces"
    # Streamed (proxied) answers carry it as well.
    async with gateway.http.get(
        f"{gateway.url}/{db}/_changes",
        headers={"Authorization": users["alice"].auth, "X-Request-ID": "feed-1"},
    ) as resp:
        assert resp.headers["X-Request-ID"] == "feed-1"


async def test_malformed_paths_and_bodies_are_couchdb_shaped(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("GET", f"/{db}/%FF%FE", auth=alice)
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call("GET", f"/{db}/a/%2E%2E/%2E%2E/_all_dbs", auth=alice, raw_path=True)
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call(
        "POST",
        f"/{db}/_bulk_docs",
        auth=alice,
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_couch_error(status, body, 400)  # CouchDB's own answer, passed through
    status, body, _ = await gateway.call("GET", "/_couchgate/nothing-here", auth=alice)
    assert status in (400, 404)
    assert_couch_error(status, body, status)


async def test_body_over_the_limit_is_413(backend: PouchServer, db: str, users: dict[str, TestUser]) -> None:
    gw = await start_gateway(gateway_settings(backend, db, max_body_bytes=2048))
    try:
        status, body, _ = await gw.call("PUT", f"/{db}/big", auth=users["alice"].auth, json={"x": "y" * 5000})
        assert_couch_error(status, body, 413, "too_large")
        status, body, _ = await gw.call("GET", f"/{db}/big", auth=users["alice"].auth)
        assert_couch_error(status, body, 404, "not_found")  # nothing half-written
    finally:
        await stop_gateway(gw)


async def test_cors_preflight_and_credentials(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    gw = await start_gateway(gateway_settings(backend, db, cors_origins=("http://app.example",)))
    try:
        async with gw.http.options(
            f"{gw.url}/{db}/_changes",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        ) as resp:  # fmt: skip
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        _, _, headers = await gw.call(
            "GET", f"/{db}", auth=users["alice"].auth, headers={"Origin": "http://app.example"}
        )
        assert headers["Access-Control-Allow-Origin"] == "http://app.example"
        _, _, headers = await gw.call(
            "GET", f"/{db}", auth=users["alice"].auth, headers={"Origin": "http://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in headers
    finally:
        await stop_gateway(gw)


@pytest.fixture
def flaky_backend() -> Iterator[PouchServer]:
    """A backend of its own, on disk, so it can be killed and brought back with its data."""
    server = PouchServer(in_memory=False).start()
    server.request("PUT", "/medic")
    server.request(
        "PUT", "/_users/org.couchdb.user:bob",
        {"_id": "org.couchdb.user:bob", "name": "bob", "password": "bob-pass", "roles": [], "type": "user"},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def flaky_gateway(flaky_backend: PouchServer) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(flaky_backend, "medic", auth_cache_seconds=0))
    yield gw
    await stop_gateway(gw)


async def test_upstream_down_is_503_and_recovers(flaky_backend: PouchServer, flaky_gateway: Gateway) -> None:
    bob = basic("bob", "bob-pass")
    status, _, _ = await flaky_gateway.call("GET", "/_couchgate/ready")
    assert status == 200
    flaky_backend.kill()
    for method, path, auth in (("GET", "/medic", bob), ("GET", "/", None), ("PUT", "/medic/x", bob)):
        status, body, _ = await flaky_gateway.call(
            method, path, auth=auth, json={} if method == "PUT" else None
        )
        assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await flaky_gateway.call("GET", "/_couchgate/ready")
    assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await flaky_gateway.call("GET", "/_couchgate/health")
    assert status == 200  # liveness does not depend on CouchDB
    await asyncio.to_thread(flaky_backend.restart)
    status, body, _ = await flaky_gateway.call("GET", "/_couchgate/ready")
    assert status == 200, body
    status, body, _ = await flaky_gateway.call("PUT", "/medic/after", auth=bob, json={"ok": 1})
    assert status == 201, body
