"""Issue 11, items 6 and 9: slow clients are bounded, and aiohttp's own refusals are
CouchDB-shaped.

Raw sockets play the slow clients: a head or a body trickled a byte at a time, idle
connections, many connections from one address. The limits are short here (a second);
what is awaited is always the server's reaction (an answer, or the connection's end).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.app import create_app
from proxy.devserver.backend import PouchServer, free_port
from proxy.server import listen, start

from support import (
    Gateway,
    TestUser,
    assert_couch_error,
    eventually,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

LIMITS = {"header_timeout": 1.0, "body_timeout": 1.0, "body_min_bytes": 64, "max_connections_per_client": 200}
# Long enough for the server to have acted many times over on a loaded machine.
PATIENCE = 60.0


@pytest.fixture
async def edge(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(backend, db, **LIMITS))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def connect(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.server.port)


async def trickle(writer: asyncio.StreamWriter, data: bytes, pause: float = 0.2) -> None:
    """Send a byte at a time, as a slow-loris client does, until the server hangs up."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(pause)


async def answer_then_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, orjson.loads(body) if body else None


async def test_trickled_headers_are_cut_off(edge: Gateway) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    reader, writer = await connect(edge)
    sender = asyncio.create_task(trickle(writer, head))
    try:
        status, headers, body = parse(await answer_then_close(reader))
    finally:
        sender.cancel()
        await close(writer)
    assert_couch_error(status, body, 408, "request_timeout")
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"


async def test_silent_and_trickling_connections_do_not_pile_up(edge: Gateway) -> None:
    connections = [await connect(edge) for _ in range(30)]
    senders = [
        asyncio.create_task(trickle(w, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100))
        for _, w in connections[:15]
    ]
    try:
        answers = await asyncio.gather(*(answer_then_close(r) for r, _ in connections))
    finally:
        for sender in senders:
            sender.cancel()
        for _, writer in connections:
            await close(writer)
    assert all(parse(raw)[0] == 408 for raw in answers)


async def test_trickled_body_is_cut_off_and_nothing_written(
    edge: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    reader, writer = await connect(edge)
    head = (
        f"PUT /{db}/slow-body HTTP/1.1\r\nHost: x\r\nAuthorization: {users['alice'].auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    writer.write(head + b'{"a": "')
    await writer.drain()
    sender = asyncio.create_task(trickle(writer, b"x" * 100000))
    try:
        raw = await answer_then_close(reader)
    finally:
        sender.cancel()
        await close(writer)
    status, _, body = parse(raw)
    assert_couch_error(status, body, 408, "request_timeout")
    assert backend.request("GET", f"/{db}/slow-body")[0] == 404


async def test_a_slow_but_steady_upload_and_a_long_longpoll_pass(
    edge: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth

    async def steady() -> Any:
        # 100 bytes every 0.3 s: above 64 bytes a second, for several of the 1 s windows.
        doc = orjson.dumps({"pad": "p" * 1200})
        chunks = [doc[i : i + 100] for i in range(0, len(doc), 100)]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.3)

        return await edge.call("PUT", f"/{db}/steady", auth=alice, data=body(),
                               headers={"Content-Type": "application/json"})  # fmt: skip

    status, body, _ = await steady()
    assert status == 201, body
    # A longpoll waiting many times the limits, with heartbeats, ends with its change.
    async with edge.http.get(
        f"{edge.url}/{db}/_changes?feed=longpoll&heartbeat=200&since=now", headers={"Authorization": alice}
    ) as resp:
        assert resp.status == 200
        beats, seen = 0, b""
        while beats < 15:  # 15 heartbeats: 3 s, three header and body windows
            line = await asyncio.wait_for(resp.content.readline(), PATIENCE)
            assert line, "the feed ended early"
            beats += line.strip() == b""
            seen += line
        assert b"wakes-it" not in seen
        assert backend.request("PUT", f"/{db}/wakes-it", {})[0] == 201
        rest = await asyncio.wait_for(resp.read(), PATIENCE)
    assert b"wakes-it" in seen + rest


async def test_connections_per_client_are_capped(backend: PouchServer, db: str) -> None:
    gw = await start_gateway(gateway_settings(backend, db, max_connections_per_client=5, header_timeout=120))
    held = [await connect(gw) for _ in range(5)]
    try:
        reader, writer = await connect(gw)
        status, headers, body = parse(await answer_then_close(reader))
        await close(writer)
        assert_couch_error(status, body, 429, "too_many_requests")
        assert headers["retry-after"] == "1"
        await close(held.pop()[1])

        async def served() -> bool:
            reader, writer = await connect(gw)
            try:
                writer.write(b"GET /_couchgate/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return parse(await answer_then_close(reader))[0] == 200
            finally:
                await close(writer)

        assert await eventually(served)
    finally:
        for _, writer in held:
            await close(writer)
        await stop_gateway(gw)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
    ids=["request line", "header too long", "target too long", "header without colon", "bad length", "tls"],
)
async def test_unparseable_requests_get_couchdb_shaped_errors(edge: Gateway, request_bytes: bytes) -> None:
    reader, writer = await connect(edge)
    try:
        writer.write(request_bytes)
        await writer.drain()
        status, headers, body = parse(await answer_then_close(reader))
    finally:
        await close(writer)
    assert headers["content-type"] == "application/json", headers
    assert_couch_error(status, body, 400, "bad_request")


async def test_unparseable_requests_on_the_production_server(backend: PouchServer, db: str) -> None:
    """`couchgate serve` runs the same edge (proxy.server.start)."""
    settings = gateway_settings(backend, db, port=free_port())
    with contextlib.closing(listen(settings)) as sock:
        runner = await start(create_app(settings), sock, 1)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
            writer.write(b"GARBAGE\r\n\r\n")
            status, _, body = parse(await answer_then_close(reader))
            await close(writer)
            assert_couch_error(status, body, 400, "bad_request")
        finally:
            await runner.cleanup()
