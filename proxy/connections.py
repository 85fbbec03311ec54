"""Client connections kept below the open-file limit (the global cap).

Every client connection is a file descriptor, and so is every connection to CouchDB: when
clients take them all, `accept()` fails with EMFILE and so does every connection couchgate
opens upstream (the index follower, credential checks, the audit log). On Python 3.11 a
failing `accept()` is logged and retried up to a hundred times per readiness event, each
retry scheduling more: a storm of log lines and a busy loop. So:

- at start, the soft RLIMIT_NOFILE is raised to the hard limit (`raise_open_files_limit`);
- at most `connection_cap` client connections are served at once: the open-file limit less
  what CouchDB's pool and couchgate's own files need, halved because an online user's live
  feed holds a second connection upstream (or COUCHGATE_MAX_CONNECTIONS); a connection past
  the cap is answered at once with 503 and `Retry-After` and closed;
- the "accept() out of system resource" line is logged once per `LOG_EVERY` seconds with
  the count of the ones left out (`quiet_accept_errors`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.settings import Settings

log = logging.getLogger("couchgate.connections")

RESERVED_FILES = 128  # listening sockets, logs, DNS, an accept burst past the cap, ...
MIN_CONNECTIONS = 16
RETRY_AFTER_SECONDS = 5
LOG_EVERY = 10.0
BUSY = orjson.dumps(
    {
        "error": "service_unavailable",
        "reason": "couchgate is serving as many connections as it can; try again",
    }
)
BUSY_HEAD = (
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    f"Retry-After: {RETRY_AFTER_SECONDS}\r\nContent-Length: {len(BUSY)}\r\nConnection: close\r\n\r\n"
)
BUSY_RESPONSE = BUSY_HEAD.encode() + BUSY


def raise_open_files_limit() -> int:
    """Raise the soft open-file limit to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(settings: Settings, open_files: int) -> int:
    """How many client connections to serve at once (see the module docstring)."""
    if settings.max_connections:
        return settings.max_connections
    spare = open_files - settings.upstream_pool_size - RESERVED_FILES
    return max(MIN_CONNECTIONS, spare // 2)


class Busy(asyncio.Protocol):
    """A connection past the cap: 503 at once, whatever it asks, then closed (after reading
    what the client sent, so closing does not reset the connection before it reads)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(BUSY_RESPONSE)
        self.closer = asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.closer.cancel()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closer.cancel()


class Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, counted from its creation to its end (aiohttp's
    own count starts only once the connection is made: a burst of accepts would pass it)."""

    def __init__(self, inner: asyncio.Protocol, factory: CappedFactory) -> None:
        self.inner = inner
        self.factory = factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.factory.open -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class CappedFactory:
    """The protocol factory of the listening socket: aiohttp's handler below the cap."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.cap:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("connection cap of %d reached: %d connections refused with 503 so far",
                            self.cap, self.refused)  # fmt: skip
            return Busy()
        self.open += 1
        return Counted(self.server(), self)


class CappedSockSite(web.SockSite):
    """`SockSite` (a socket already listening) whose connections go through `CappedFactory`."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, cap: int) -> None:
        super().__init__(runner, sock, backlog=1024)
        self.cap = cap

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            CappedFactory(server, self.cap), sock=self._sock, backlog=self._backlog
        )


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncio's "accept() out of system resource" once per LOG_EVERY seconds."""
    last = 0.0
    left_out = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last, left_out
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - last < LOG_EVERY:
            left_out += 1
            return
        log.error("accept() out of system resource (see COUCHGATE_MAX_CONNECTIONS): %s; %d more like "
                  "it in the last %.0f s", context.get("exception"), left_out, LOG_EVERY)  # fmt: skip
        last, left_out = now, 0

    loop.set_exception_handler(handler)
