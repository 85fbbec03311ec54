"""No upstream answer ever reaches a request it does not belong to.

CouchDB 3.4.3 can write two answers to one request on a kept-alive connection (a filtered
`_changes` racing the deletion of its database); each later request on that pooled
connection then read the answer meant for the one before it. No real server can be made to
do that on demand, so a raw asyncio server stands in for CouchDB here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from proxy.couch.client import CouchClient, new_session
from proxy.errors import UpstreamError
from proxy.settings import load_settings

from support import eventually


def answer(body: object, request_id: str | None = None, status: str = "200 OK") -> bytes:
    raw = orjson.dumps(body)
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
    if request_id is not None:
        head += f"X-Couch-Request-ID: {request_id}\r\n"
    return head.encode() + b"\r\n" + raw


@dataclass
class FakeCouch:
    """Answers each request with `{"path": <its path>}` (the `X-Couch-Request-ID` is the
    path too), in order, on kept-alive connections. `before[path]`: bytes written before the
    answer to `path`; `after[path]`: bytes written with it, in the same write."""

    before: dict[str, bytes] = field(default_factory=dict)
    after: dict[str, bytes] = field(default_factory=dict)
    connections: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1].decode()
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                if path.startswith("/big"):
                    body = b"x" * 1_000_000
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                else:
                    writer.write(
                        self.before.get(path, b"") + answer({"path": path}, path) + self.after.get(path, b"")
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def write_unasked(self, data: bytes) -> None:
        """Bytes on the latest connection, while nothing was asked on it."""
        self.connections[-1].write(data)
        await self.connections[-1].drain()


@pytest.fixture
async def fake() -> AsyncIterator[FakeCouch]:
    couch = FakeCouch()
    couch.server = await asyncio.start_server(couch.serve, "127.0.0.1", 0)
    try:
        yield couch
    finally:
        couch.server.close()
        for writer in couch.connections:
            writer.close()
        await couch.server.wait_closed()


@pytest.fixture
async def client(fake: FakeCouch) -> AsyncIterator[CouchClient]:
    settings = load_settings(couch_url=fake.url, couch_password="x")
    session = new_session(settings)
    try:
        yield CouchClient(session, settings)
    finally:
        await session.close()


async def path_of(client: CouchClient, path: str) -> object:
    result = await client.json("GET", path)
    assert result.status == 200
    return result.body["path"]


def idle_with_bytes(client: CouchClient) -> bool:
    """Whether a pooled, idle connection has received something (the test's only look
    inside aiohttp: it waits for the stray bytes to arrive rather than for a time)."""
    conns = client.session.connector._conns  # type: ignore[union-attr]
    return any(proto.should_close for pooled in conns.values() for proto, _ in pooled)


async def test_an_answer_that_arrives_on_an_idle_connection_is_never_read_by_the_next_request(
    fake: FakeCouch, client: CouchClient
) -> None:
    assert await path_of(client, "/first") == "/first"
    await fake.write_unasked(answer({"path": "/stray"}, "/first", "500 Internal Server Error"))
    assert await eventually(lambda: asyncio.sleep(0, idle_with_bytes(client)))
    assert await path_of(client, "/second") == "/second"
    assert await path_of(client, "/third") == "/third"
    assert len(fake.connections) == 2  # the poisoned connection was dropped, not reused


async def test_a_second_answer_sent_with_the_first_is_dropped_with_its_connection(
    fake: FakeCouch, client: CouchClient
) -> None:
    fake.after["/first"] = answer({"path": "/stray"}, "/first")
    assert await path_of(client, "/first") == "/first"
    assert await path_of(client, "/second") == "/second"
    assert await path_of(client, "/third") == "/third"
    assert len(fake.connections) == 2


async def test_an_answer_repeating_the_previous_request_id_is_refused_not_handed_on(
    fake: FakeCouch, client: CouchClient
) -> None:
    """The stray comes only after the next request was sent: what gives it away is the
    request id CouchDB stamps on every answer, the same as the answer before it."""
    fake.before["/second"] = answer({"path": "/stray"}, "/first", "500 Internal Server Error")
    assert await path_of(client, "/first") == "/first"
    with pytest.raises(UpstreamError) as refused:
        await client.json("GET", "/second")
    assert refused.value.status == 502
    assert await path_of(client, "/third") == "/third"
    assert len(fake.connections) == 2
    async with client.stream("GET", "/fourth", headers={}) as resp:
        assert orjson.loads(await resp.read()) == {"path": "/fourth"}


async def test_a_connection_left_before_its_answer_ended_is_not_reused(
    fake: FakeCouch, client: CouchClient
) -> None:
    async with client.stream("GET", "/big", headers={}) as resp:
        assert await resp.content.readany()  # a client went away: the rest stays unread
    assert await path_of(client, "/after") == "/after"
    assert len(fake.connections) == 2
