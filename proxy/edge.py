"""The HTTP edge: what couchgate does on a connection before and beside its handlers.

- A request's head (request line and headers) must arrive within COUCHGATE_HEADER_TIMEOUT
  of its first byte (of the connection's opening, for the first request): else 408 and
  the connection is closed.
- While a request body is arriving, each COUCHGATE_BODY_TIMEOUT seconds must bring at
  least COUCHGATE_BODY_MIN_BYTES, unless couchgate itself had stopped reading (then the
  slowness is couchgate's): else the handler reading it gets 408 and the connection closes.
- At most COUCHGATE_MAX_CONNECTIONS_PER_CLIENT connections at once per client address
  (the peer; the trusted proxies of COUCHGATE_TRUSTED_PROXIES are exempt, they carry many
  clients): the next one is answered 429 and closed.
- aiohttp's own refusals of what it cannot parse (a bad request line, a header too long)
  are CouchDB-shaped JSON, like every other error couchgate gives.

The limits are on what clients send, never on how long an answer takes: a longpoll
`_changes` that waits a minute with heartbeats is not touched by them.

`EdgeRunner` serves an application with these rules; `couchgate serve`, `couchgate dev`
and the tests' gateways run on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy.clients import Network, is_trusted, networks
from proxy.errors import RequestTimeout, error_name
from proxy.keys import SETTINGS
from proxy.settings import Settings

log = logging.getLogger("couchgate.edge")
# After a stalled body's handler was told, the connection is closed this long after at the latest.
STALL_GRACE = 5.0
TOO_MANY_CONNECTIONS = "too many connections from this address"
PARSE_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "the request line or a header is too long"),
    (http_exceptions.BadHttpMethod, "the request line is malformed"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.InvalidURLError, "the request target is malformed"),
    (http_exceptions.InvalidHeader, "a request header is malformed"),
    (http_exceptions.TransferEncodingError, "the request body's framing is malformed"),
    (http_exceptions.ContentLengthError, "the request body's length is wrong"),
    (http_exceptions.ContentEncodingError, "the request body's encoding is malformed"),
)


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float
    body_timeout: float
    body_min_bytes: int
    max_per_client: int
    trusted: tuple[Network, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> EdgeLimits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            body_min_bytes=settings.body_min_bytes,
            max_per_client=settings.max_connections_per_client,
            trusted=networks(settings.trusted_proxies),
        )


def raw_error(status: int, phrase: str, reason: str, headers: str = "") -> bytes:
    """A complete CouchDB-shaped error response, for a connection no handler is serving."""
    body = orjson.dumps({"error": error_name(status), "reason": reason})
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    )
    return head.encode() + body


class EdgeServer(web.Server):
    """aiohttp's server with `EdgeRequestHandler` connections and a count per client."""

    limits: EdgeLimits
    clients: Counter[str]

    @classmethod
    def adopt(cls, server: web.Server, limits: EdgeLimits) -> EdgeServer:
        edge = cls.__new__(cls)
        edge.__dict__.update(server.__dict__)
        edge.limits = limits
        edge.clients = Counter()
        return edge

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An `AppRunner` whose connections keep the edge rules (limits from the app's settings)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return EdgeServer.adopt(server, EdgeLimits.of(self.app[SETTINGS]))


class EdgeRequestHandler(RequestHandler):
    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._limits = manager.limits
        self._client: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0
        self._stalled = False

    # -- connections per client ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        if address and not is_trusted(address, self._limits.trusted):
            if self._edge.clients[address] >= self._limits.max_per_client:
                log.warning("refused a connection: %s has too many open", address)
                refusal = raw_error(429, "Too Many Requests", TOO_MANY_CONNECTIONS, "Retry-After: 1\r\n")
                self._close_with(refusal)
                return
            self._edge.clients[address] += 1
            self._client = address
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is not None:
            self._edge.clients[self._client] -= 1
            if self._edge.clients[self._client] <= 0:
                del self._edge.clients[self._client]
            self._client = None
        self._stop_head_timer()
        self._stop_body_watch()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body the handler never read (an answer that did not need it: a 401, a GET) is
        drained after the answer; one that does not decode as its Content-Encoding says
        fails there. That is the client's doing, not couchgate's: the connection is closed
        (aiohttp does so after this) and a line logged, not an error with a traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | http_exceptions.PayloadEncodingError):
            log.info("dropped a request body that does not decode (from %s)", self._client or "a client")
            return
        super().log_exception(*args, **kw)

    def _close_with(self, response: bytes) -> None:
        if self.transport is not None:
            self.transport.write(response)
        self.force_close()

    # -- the request head --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._stalled:
            return  # what a stalled client still sends is dropped unread
        requests_before = self._request_count
        body_before = self._body is not None and not self._body.is_eof()
        super().data_received(data)
        if body_before:
            self._body_seen += len(data)
        if self._request_count > requests_before:
            self._stop_head_timer()
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._watch_body(payload)
        elif data and not body_before:
            self._start_head_timer()  # the first bytes of the next request's head

    def _start_head_timer(self) -> None:
        if self._head_timer is None and not self._force_close:
            self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._request_in_progress:
            # An earlier request is still being answered: its response owns the connection.
            self._start_head_timer()
            return
        self._close_with(raw_error(408, "Request Timeout", "the request's headers did not arrive in time"))

    # -- the request body ---------------------------------------------------------------------

    def _watch_body(self, payload: StreamReader) -> None:
        self._stop_body_watch()
        self._body, self._body_seen = payload, 0
        self._body_timer = self._loop.call_later(self._limits.body_timeout, self._check_body)

    def _stop_body_watch(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None

    def _check_body(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            self._body = None
            return
        if self._reading_paused or self._body_seen >= self._limits.body_min_bytes:
            # Enough arrived, or couchgate was not reading (its buffers were full): go on.
            self._body_seen = 0
            self._body_timer = self._loop.call_later(self._limits.body_timeout, self._check_body)
            return
        log.warning("a request body from %s stalled: closing the connection", self._client or "a client")
        self._body = None
        body.set_exception(RequestTimeout("the request body arrived too slowly"))
        self._lingering_time = 0.0  # nothing more is read from this client
        self._stalled = True
        self.close()
        self._loop.call_later(STALL_GRACE, self.force_close)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._stalled:
            self._half_close()
        return result

    def _half_close(self) -> None:
        """End a stalled client's connection so that it still reads its 408.

        Closing a socket while the client's bytes wait unread in it makes the kernel send a
        reset, and a reset makes the client's kernel throw away the answer it had not read
        yet. So the answer is followed by a FIN only (the write side shut), the client's
        further bytes are read and dropped, and the socket closes when the client closes
        its side, or STALL_GRACE later at the latest.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            return
        # aiohttp closes `self.transport` when the request is done: it gets none to close.
        self.transport = None
        transport.write_eof()
        self._loop.call_later(STALL_GRACE, transport.close)

    # -- aiohttp's own errors, CouchDB-shaped -------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            reason = "couchgate could not complete the request"
        else:
            reason = next(
                (text for kind, text in PARSE_ERRORS if isinstance(exc, kind)), "the request is malformed"
            )
            log.info("refused a malformed request from %s: %s", request.remote, type(exc).__name__)
        body = {"error": error_name(status), "reason": reason}
        response = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        response.force_close()
        return response
