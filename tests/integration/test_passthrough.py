"""Transparent proxying of CouchDB for callers couchgate lets through (basic auth here)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.devserver.backend import PouchServer
from proxy.settings import load_settings

from support import (
    ON_COUCHDB,
    Gateway,
    TestUser,
    assert_couch_error,
    gateway_settings,
    start_gateway,
    stop_gateway,
)


async def test_doc_crud_preserves_status_bodies_and_query(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1", auth=alice, json={"n": 1})
    assert status == 201 and body["ok"] is True
    rev1 = body["rev"]
    status, body, _ = await gateway.call("GET", f"/{db}/doc1", auth=alice)
    assert status == 200 and body == {"_id": "doc1", "_rev": rev1, "n": 1}
    # A stale rev is CouchDB's own 409, passed through unchanged.
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1", auth=alice, json={"n": 2, "_rev": "1-abc"})
    assert_couch_error(status, body, 409, "conflict")
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1?rev={rev1}", auth=alice, json={"n": 2})
    assert status == 201
    rev2 = body["rev"]
    status, body, _ = await gateway.call("GET", f"/{db}/doc1?revs=true", auth=alice)
    assert body["_revisions"]["start"] == 2 and len(body["_revisions"]["ids"]) == 2
    status, body, _ = await gateway.call("DELETE", f"/{db}/doc1?rev={rev2}", auth=alice)
    assert status == 200 and body["ok"] is True
    status, body, _ = await gateway.call("GET", f"/{db}/doc1", auth=alice)
    assert_couch_error(status, body, 404, "not_found")


async def test_post_creates_and_location_points_at_couchgate(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    status, body, headers = await gateway.call("PUT", f"/{db}/located", auth=users["alice"].auth, json={})
    assert status == 201
    assert headers["Location"] == f"{gateway.url}/{db}/located"  # never the upstream's address
    status, body, headers = await gateway.call("POST", f"/{db}", auth=users["alice"].auth, json={"x": 1})
    assert status == 201 and body["id"]
    assert headers["Location"] == f"{gateway.url}/{db}/{body['id']}"


async def test_doc_ids_with_encoded_slashes_round_trip(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/a%2Fb", auth=alice, json={"v": 1})
    assert status == 201, body
    status, body, _ = await gateway.call("GET", f"/{db}/a%2Fb", auth=alice)
    assert status == 200 and body["_id"] == "a/b"


async def test_bulk_docs_and_all_docs(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    docs = [{"_id": f"d{i:03d}", "i": i} for i in range(50)]
    status, body, _ = await gateway.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs})
    assert status == 201 and sorted(r["id"] for r in body) == [d["_id"] for d in docs]
    status, body, _ = await gateway.call(
        "GET", f'/{db}/_all_docs?include_docs=true&startkey="d010"&endkey="d019"', auth=alice
    )
    assert status == 200 and [r["id"] for r in body["rows"]] == [f"d{i:03d}" for i in range(10, 20)]
    assert body["rows"][0]["doc"]["i"] == 10
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_all_docs", auth=alice, json={"keys": ["d001", "nope"]}
    )
    assert [r.get("id") for r in body["rows"]] == ["d001", None]
    assert body["rows"][1]["error"] == "not_found"


async def test_attachments_stream_both_ways(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value

    async def chunks():  # a chunked upload with no Content-Length
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    status, body, _ = await gateway.call(
        "PUT",
        f"/{db}/withatt/blob.bin",
        auth=alice,
        data=chunks(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    async with gateway.http.get(
        f"{gateway.url}/{db}/withatt/blob.bin", headers={"Authorization": alice}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/octet-stream")
        assert await resp.read() == payload
    status, body, _ = await gateway.call("GET", f"/{db}/withatt", auth=alice)
    assert body["_attachments"]["blob.bin"]["length"] == len(payload)


async def test_inline_attachment_in_json(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    data = base64.b64encode(b"hello").decode()
    doc = {"_attachments": {"a.txt": {"content_type": "text/plain", "data": data}}}
    status, _, _ = await gateway.call("PUT", f"/{db}/inline", auth=users["alice"].auth, json=doc)
    assert status == 201
    async with gateway.http.get(
        f"{gateway.url}/{db}/inline/a.txt", headers={"Authorization": users["alice"].auth}
    ) as resp:
        assert await resp.read() == b"hello"


async def test_changes_normal_feed(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    await gateway.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": [{"_id": "c1"}, {"_id": "c2"}]})
    status, body, _ = await gateway.call("GET", f"/{db}/_changes?style=all_docs", auth=alice)
    assert status == 200 and {r["id"] for r in body["results"]} == {"c1", "c2"}
    assert "last_seq" in body


async def test_changes_longpoll_wakes_on_write(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    _, body, _ = await gateway.call("GET", f"/{db}/_changes", auth=alice)
    since = body["last_seq"]

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        await gateway.call("PUT", f"/{db}/late", auth=alice, json={})

    writer = asyncio.create_task(write_later())
    status, body, _ = await gateway.call(
        "GET", f"/{db}/_changes?feed=longpoll&since={since}&heartbeat=1000", auth=alice
    )
    await writer
    assert status == 200 and [r["id"] for r in body["results"]] == ["late"]


async def test_continuous_changes_stream_without_buffering(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    """Rows arrive while the endless feed is still open: nothing waits for its end."""
    alice = users["alice"].auth
    await gateway.call("PUT", f"/{db}/first", auth=alice, json={})
    url = f"{gateway.url}/{db}/_changes?feed=continuous&heartbeat=500"
    seen: list[str] = []
    async with gateway.http.get(url, headers={"Authorization": alice}) as resp:
        assert resp.status == 200

        async def read_rows() -> None:
            async for line in resp.content:
                if line.strip():
                    seen.append(orjson.loads(line)["id"])
                    if "second" in seen:
                        return

        reader = asyncio.create_task(read_rows())
        await asyncio.sleep(0.3)
        await gateway.call("PUT", f"/{db}/second", auth=alice, json={})
        await asyncio.wait_for(reader, timeout=10)
    assert seen == ["first", "second"]


async def test_non_member_is_refused_by_couchdb(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    status, body, _ = await gateway.call("GET", f"/{db}/_all_docs", auth=users["mallory"].auth)
    # pouchdb-server answers an authenticated non-member 401, CouchDB 403.
    assert_couch_error(status, body, 403 if ON_COUCHDB else 401)


async def test_http10_client_gets_a_feed_without_chunking(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    """HTTP/1.0 has no chunked encoding: a body of unknown length ends with the connection."""
    await gateway.call("PUT", f"/{db}/old-client", auth=users["alice"].auth, json={})
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /{db}/_changes?feed=continuous&heartbeat=500 HTTP/1.0\r\n"
            f"Host: {host}\r\nAuthorization: {users['alice'].auth}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status_line, *header_lines = head.decode().split("\r\n")
        assert status_line.split(" ")[1] == "200", head
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        assert "transfer-encoding" not in headers and "content-length" not in headers, headers
        assert headers.get("connection", "close").lower() == "close", headers  # 1.0: close by default
        line = await asyncio.wait_for(reader.readuntil(b"}\n"), timeout=10)
        assert orjson.loads(line)["id"] == "old-client"  # raw rows, no chunk sizes
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def header_echo() -> AsyncIterator[tuple[Gateway, list[dict[str, str]]]]:
    """couchgate in front of a tiny upstream that records request headers and answers with
    hop-by-hop ones: what crosses the proxy is couchgate's behaviour, not CouchDB's."""
    seen: list[dict[str, str]] = []

    async def session(request: web.Request) -> web.Response:
        seen.append({"_session": request.headers.get("Authorization", "")})
        return web.json_response({"ok": True, "userCtx": {"name": "admin", "roles": ["_admin"]}})

    async def echo(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        headers = {"Connection": "X-Upstream-Hop", "X-Upstream-Hop": "secret", "Keep-Alive": "timeout=5",
                   "X-Kept": "yes", "Proxy-Authenticate": "Basic"}  # fmt: skip
        return web.json_response({"ok": True}, headers=headers)

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "not_found", "reason": "missing"}, status=404)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)  # longer than the gateway's request_timeout below
        return web.json_response({"results": [], "last_seq": 1})

    upstream_app = web.Application()
    upstream_app.router.add_get("/_session", session)
    upstream_app.router.add_get("/echo/doc", echo)
    upstream_app.router.add_get("/echo/slow", slow)
    upstream_app.router.add_get("/echo/_changes", slow)
    upstream_app.router.add_route("*", "/{tail:.*}", missing)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    settings = load_settings(
        couch_url=f"http://127.0.0.1:{upstream.port}", couch_user="admin", couch_password="pass",
        db="echo", log_json=False, audit_enabled=False, conflicts_interval=3600, request_timeout=0.5,
    )  # fmt: skip
    gw = await start_gateway(settings)
    try:
        yield gw, seen
    finally:
        await stop_gateway(gw)
        await upstream.close()


async def test_hop_by_hop_headers_are_dropped_both_ways(
    header_echo: tuple[Gateway, list[dict[str, str]]],
) -> None:
    gw, seen = header_echo
    status, _, headers = await gw.call(
        "GET", "/echo/doc", auth="Basic YWRtaW46cGFzcw==",
        headers={"Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "secret", "Keep-Alive": "timeout=5",
                 "TE": "trailers", "Proxy-Authorization": "Basic eHg6eXk=", "If-None-Match": '"1-a"'},
    )  # fmt: skip
    assert status == 200
    sent = seen[-1]
    assert sent["if-none-match"] == '"1-a"'  # what CouchDB's protocol uses goes through
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in sent, (name, sent)
    assert sent.get("connection", "keep-alive").lower() == "keep-alive"  # aiohttp's own, not ours
    assert headers["X-Kept"] == "yes"
    for name in ("X-Upstream-Hop", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in headers, (name, dict(headers))


async def test_stalled_answers_time_out_but_quiet_live_feeds_do_not(
    header_echo: tuple[Gateway, list[dict[str, str]]],
) -> None:
    gw, _ = header_echo
    admin = "Basic YWRtaW46cGFzcw=="
    status, body, _ = await gw.call("GET", "/echo/slow", auth=admin)
    assert_couch_error(status, body, 504, "gateway_timeout")
    # A longpoll without heartbeat rightly stays silent until something changes.
    status, body, _ = await gw.call("GET", "/echo/_changes?feed=longpoll", auth=admin)
    assert status == 200 and body["last_seq"] == 1


async def test_open_feeds_do_not_starve_other_requests(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    """More live feeds than the upstream pool holds: requests and credential checks still pass."""
    gw = await start_gateway(gateway_settings(backend, db, upstream_pool_size=2, auth_cache_seconds=0))
    alice = users["alice"].auth
    feeds = []
    try:
        for _ in range(4):
            resp = await gw.http.get(
                f"{gw.url}/{db}/_changes?feed=continuous&heartbeat=500", headers={"Authorization": alice}
            )
            assert resp.status == 200
            await asyncio.wait_for(resp.content.readline(), timeout=10)  # the feed is flowing
            feeds.append(resp)
        for i in range(3):  # each one checks alice's password upstream again (no cache)
            status, body, _ = await asyncio.wait_for(
                gw.call("PUT", f"/{db}/while-feeds-{i}", auth=alice, json={}), timeout=10
            )
            assert status == 201, body
    finally:
        for resp in feeds:
            resp.close()
        await stop_gateway(gw)


async def test_basic_credentials_are_checked_upstream_once_while_cached(
    header_echo: tuple[Gateway, list[dict[str, str]]],
) -> None:
    gw, seen = header_echo
    admin, other = "Basic YWRtaW46cGFzcw==", "Basic YWRtaW46b3RoZXI="

    def session_checks() -> list[str]:
        return [entry["_session"] for entry in seen if "_session" in entry]

    for _ in range(3):
        status, _, _ = await gw.call("GET", "/echo/doc", auth=admin)
        assert status == 200
    assert session_checks() == [admin]  # the first request asked CouchDB; the others did not
    await gw.call("GET", "/echo/doc", auth=other)
    assert session_checks() == [admin, other]  # other credentials are never a cache hit
