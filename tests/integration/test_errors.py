"""Error shapes, request ids, CORS, and the upstream going away and coming back."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.devserver.backend import PouchServer
from proxy.logs import AccessLogger, JsonFormatter
from proxy.settings import load_settings

from support import (
    JWT_SECRET,
    ON_COUCHDB,
    Gateway,
    TestUser,
    assert_couch_error,
    basic,
    eventually,
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
    generated = set()
    for _ in range(2):  # an error answer carries one too; each request gets its own
        _, _, headers = await gateway.call("GET", f"/{db}/_all_docs")
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"]), headers["X-Request-ID"]
        generated.add(headers["X-Request-ID"])
    assert len(generated) == 2
    # An id that is not safe to log is replaced, not echoed.
    _, _, headers = await gateway.call("GET", "/", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"]), headers["X-Request-ID"]
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
    # An unknown server path is forwarded: CouchDB 3.4 tells a non-admin 401 "You are not a
    # server admin.", pouchdb-server answers 400 or 404.
    assert status == 401 if ON_COUCHDB else status in (400, 404)
    assert_couch_error(status, body, status)


async def test_body_over_the_limit_is_413(backend: PouchServer, db: str, users: dict[str, TestUser]) -> None:
    gw = await start_gateway(gateway_settings(backend, db, max_body_bytes=2048))
    try:
        status, body, _ = await gw.call("PUT", f"/{db}/big", auth=users["alice"].auth, json={"x": "y" * 5000})
        assert_couch_error(status, body, 413, "too_large")
        status, body, _ = await gw.call("GET", f"/{db}/big", auth=users["alice"].auth)
        assert_couch_error(status, body, 404, "not_found")  # nothing half-written

        async def chunks():  # no Content-Length: the limit is found while streaming upstream
            for _ in range(8):
                yield b"x" * 1024

        status, body, _ = await gw.call(
            "PUT", f"/{db}/big/att.bin", auth=users["alice"].auth, data=chunks(),
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert_couch_error(status, body, 413, "too_large")
        status, body, _ = await gw.call("GET", f"/{db}/big", auth=users["alice"].auth)
        assert_couch_error(status, body, 404, "not_found")
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


@pytest.mark.backend("pouchdb-server", reason="kills and restarts a pouchdb-server of its own")
async def test_upstream_down_is_503_and_recovers(flaky_backend: PouchServer, flaky_gateway: Gateway) -> None:
    bob = basic("bob", "bob-pass")

    async def ready() -> bool:
        return (await flaky_gateway.call("GET", "/_couchgate/ready"))[0] == 200

    assert await eventually(ready)  # once the scope index is built
    flaky_backend.kill()
    for method, path, auth in (("GET", "/medic", bob), ("GET", "/", None), ("PUT", "/medic/x", bob)):
        status, body, _ = await flaky_gateway.call(
            method, path, auth=auth, json={} if method == "PUT" else None
        )
        assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await flaky_gateway.call("GET", "/_couchgate/ready")
    assert_couch_error(status, body, 503, "service_unavailable")
    # Checking credentials needs CouchDB: down is 503, never "Name or password is incorrect".
    status, body, _ = await flaky_gateway.call("GET", "/medic", headers={"Cookie": "AuthSession=abc"})
    assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await flaky_gateway.call(
        "POST", "/_couchgate/token", json={"name": "bob", "password": "bob-pass"}
    )
    assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await flaky_gateway.call("GET", "/_couchgate/health")
    assert status == 200  # liveness does not depend on CouchDB
    await asyncio.to_thread(flaky_backend.restart)

    async def ready() -> bool:  # once the index is level with CouchDB again (within a second)
        return (await flaky_gateway.call("GET", "/_couchgate/ready"))[0] == 200

    assert await eventually(ready)
    status, body, _ = await flaky_gateway.call("PUT", "/medic/after", auth=bob, json={"ok": 1})
    assert status == 201, body


@pytest.fixture
async def failing_session_gateway() -> AsyncIterator[Gateway]:
    """couchgate in front of an upstream whose `GET /_session` fails with a 500."""

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "unknown_error", "reason": "function_clause"}, status=500)

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", broken)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    settings = load_settings(
        couch_url=f"http://127.0.0.1:{upstream.port}", couch_user="admin", couch_password="pass",
        jwt_secret=JWT_SECRET, log_json=False, audit_enabled=False, conflicts_interval=3600,
    )  # fmt: skip
    gw = await start_gateway(settings)
    try:
        yield gw
    finally:
        await stop_gateway(gw)
        await upstream.close()


async def test_upstream_5xx_while_checking_credentials_is_503_not_401(
    failing_session_gateway: Gateway,
) -> None:
    gw = failing_session_gateway
    for headers in ({"Authorization": basic("bob", "bob-pass")}, {"Cookie": "AuthSession=abc"}):
        status, body, _ = await gw.call("GET", "/medic", headers=headers)
        assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await gw.call("POST", "/_couchgate/token", json={"name": "bob", "password": "bob-pass"})
    assert_couch_error(status, body, 503, "service_unavailable")


async def test_json_log_lines_carry_the_request_id(failing_session_gateway: Gateway) -> None:
    """Lines logged while serving a request, and its access line, name the request."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    capture = Capture(level=logging.INFO)
    capture.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("couchgate"), logging.getLogger("aiohttp.access")]
    levels = [logger.level for logger in loggers]
    gw = failing_session_gateway
    # An app of its own, served as `couchgate serve` does, with its access log.
    server = TestServer(create_app(gw.settings), host="127.0.0.1")
    await server.start_server(access_log_class=AccessLogger)
    try:
        for logger in loggers:
            logger.addHandler(capture)
            logger.setLevel(logging.INFO)
        async with gw.http.get(
            f"http://127.0.0.1:{server.port}/medic",
            headers={"Authorization": basic("bob", "bob-pass"), "X-Request-ID": "log-me-1"},
        ) as resp:
            assert resp.status == 503
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)
        await server.close()
    entries = [orjson.loads(line) for line in lines]
    ours = [e for e in entries if e["request_id"] == "log-me-1"]
    assert any(e["logger"] == "couchgate.errors" and e["level"] == "WARNING" for e in ours), entries
    assert any(e["logger"] == "aiohttp.access" and e.get("status") == 503 for e in ours), entries


async def test_ready_is_503_when_the_database_is_missing(backend: PouchServer) -> None:
    gw = await start_gateway(gateway_settings(backend, "no-such-db", audit_enabled=False))
    try:
        status, body, _ = await gw.call("GET", "/_couchgate/ready")
        assert_couch_error(status, body, 503, "service_unavailable")
        assert "no-such-db" in body["reason"]
    finally:
        await stop_gateway(gw)


async def test_ready_waits_for_the_first_build_of_the_scope_index() -> None:
    """Until the index is built, an offline user's first sync would wait for the whole build.
    A real CouchDB builds it too fast to watch: this upstream holds `_changes` back."""
    release = asyncio.Event()

    async def db_info(request: web.Request) -> web.Response:
        return web.json_response({"db_name": "medic", "doc_count": 0})

    async def changes(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"results": [], "last_seq": "1-x"})

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "not_found", "reason": "missing"}, status=404)

    upstream_app = web.Application()
    upstream_app.router.add_get("/medic", db_info)
    upstream_app.router.add_get("/medic/_changes", changes)
    upstream_app.router.add_route("*", "/{tail:.*}", missing)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    settings = load_settings(
        couch_url=f"http://127.0.0.1:{upstream.port}", couch_user="admin", couch_password="pass",
        log_json=False, audit_enabled=False, conflicts_interval=3600,
    )  # fmt: skip
    gw = await start_gateway(settings)
    try:
        status, body, _ = await gw.call("GET", "/_couchgate/ready")
        assert_couch_error(status, body, 503, "service_unavailable")
        assert "index" in body["reason"]
        release.set()

        async def ready() -> bool:
            status, body, _ = await gw.call("GET", "/_couchgate/ready")
            return status == 200 and body["checks"]["index"] == "ok"

        assert await eventually(ready)
    finally:
        release.set()
        await stop_gateway(gw)
        await upstream.close()
