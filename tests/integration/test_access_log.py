"""The access log, as `couchgate serve` writes it: every request gets its line, with the
query string (secrets redacted), and a client that goes away mid-request is not an error."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.app import create_app
from proxy.devserver.backend import PouchServer
from proxy.server import start
from proxy.settings import Settings

from offline_data import auth
from support import TestUser, basic, eventually, gateway_settings


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """couchgate run as `couchgate serve` runs it (proxy.server.start: its runner, its access
    logger, and aiohttp's defaults, under which a handler is not cancelled when its client
    leaves; test servers cancel it)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        runner = await start(create_app(settings), sock, shutdown_timeout=5)
        try:
            yield "127.0.0.1", sock.getsockname()[1]
        finally:
            await runner.cleanup()


async def leave_after_first_bytes(host: str, port: int, target: str, authorization: str) -> bytes:
    """Send a request, read the start of the answer, and drop the connection (a reset)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    return head


def access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aiohttp.access" and getattr(r, "path", None) == path]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_a_proxied_feed_is_logged_as_an_access_not_an_error(
    backend: PouchServer, db: str, users: dict[str, TestUser], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(gateway_settings(backend, db)) as (host, port):
        target = f"/{db}/_changes?feed=continuous&heartbeat=100"
        head = await leave_after_first_bytes(host, port, target, users["alice"].auth)
        assert head.startswith(b"HTTP/1.1 200")
        assert await eventually(lambda: asyncio.sleep(0, access_lines(caplog, f"/{db}/_changes")), within=20)
    [line] = access_lines(caplog, f"/{db}/_changes")
    assert line.getMessage() == f"GET {target} 200" and line.query == "feed=continuous&heartbeat=100"  # type: ignore[attr-defined]
    assert errors(caplog) == []


async def test_an_offline_client_leaving_during_a_heartbeat_is_not_an_error(
    backend: PouchServer, medic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(gateway_settings(backend, medic)) as (host, port):
        target = f"/{medic}/_changes?feed=longpoll&since=now&heartbeat=100&timeout=60000"
        head = await leave_after_first_bytes(host, port, target, auth("chw1"))
        assert head.startswith(b"HTTP/1.1 200")
        assert await eventually(
            lambda: asyncio.sleep(0, access_lines(caplog, f"/{medic}/_changes")), within=20
        )
    [line] = access_lines(caplog, f"/{medic}/_changes")
    assert line.getMessage() == f"GET {target} 200" and line.user == "chw1"  # type: ignore[attr-defined]
    assert errors(caplog) == []


async def test_a_client_gone_before_its_answer_gets_an_access_line_with_499(
    backend: PouchServer, db: str, users: dict[str, TestUser], caplog: pytest.LogCaptureFixture
) -> None:
    """An upload the client abandons halfway: nothing was answered yet."""
    caplog.set_level(logging.DEBUG)
    async with served(gateway_settings(backend, db)) as (host, port):
        _, writer = await asyncio.open_connection(host, port)
        path = f"/{db}/upload/big.bin"
        writer.write(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {users['alice'].auth}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
            + b"x" * 100_000
        )
        await writer.drain()
        writer.transport.abort()
        assert await eventually(lambda: asyncio.sleep(0, access_lines(caplog, path)), within=20)
    [line] = access_lines(caplog, path)
    assert line.status == 499  # type: ignore[attr-defined]
    assert errors(caplog) == []


async def test_query_strings_are_logged_with_secrets_redacted(
    backend: PouchServer, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = basic(backend.admin_user, backend.admin_password)
    query = "password=hunter2&Token=t0ps3cret&api_key=k3y&access_token=a1&auth=z9&since=3&key=%22a%22&include_docs=true"
    async with served(gateway_settings(backend, db)) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /{db}/_all_docs?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: {admin}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert await eventually(lambda: asyncio.sleep(0, access_lines(caplog, f"/{db}/_all_docs")))
    [line] = access_lines(caplog, f"/{db}/_all_docs")
    assert line.query == (  # type: ignore[attr-defined]
        "password=REDACTED&Token=REDACTED&api_key=REDACTED&access_token=REDACTED&auth=REDACTED"
        "&since=3&key=%22a%22&include_docs=true"
    )
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert not any(secret in logged for secret in ("hunter2", "t0ps3cret", "k3y", "a1&", "z9"))
