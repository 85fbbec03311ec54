"""One upstream `ClientSession`, the service account, and the mapping of client errors.

Every low-level failure talking to CouchDB leaves this module as an `UpstreamError`:

    aiohttp.ClientConnectorError, ServerDisconnectedError,
    ClientOSError, ConnectionError            -> UpstreamUnavailable (503)
    asyncio.TimeoutError, ServerTimeoutError  -> UpstreamTimeout (504)
    ClientPayloadError, ClientResponseError,
    other aiohttp.ClientError                 -> UpstreamError (502)
    an upstream body that is not JSON         -> UpstreamError (502)
    a CouchgateError from our own request
    body iterator (wrapped by aiohttp)        -> that error itself (e.g. 413)
    a second answer to an earlier request     -> UpstreamError (502)

A kept-alive connection carries one answer per request, in order. If CouchDB ever writes
more (CouchDB 3.4.3 can, when a database is deleted under a filtered `_changes`), every
later request on that connection would read the answer meant for the one before it, so:
the pool never hands out a connection with unread bytes on it or whose last exchange did
not end (`CleanConnector`), and an answer carrying the `X-Couch-Request-ID` of the previous
answer on its connection is refused and the connection closed (`CouchClient`).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import orjson
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from proxy.errors import CouchgateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable, dumps
from proxy.settings import Settings

JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
LIVE_FEEDS = {"longpoll", "continuous", "eventsource"}
# Set while serving an offline user (and in the index follower): CouchDB's answer must begin
# within COUCHGATE_FIRST_BYTE_TIMEOUT, not COUCHGATE_REQUEST_TIMEOUT (see `CouchClient`).
FAIL_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("couch_fail_fast", default=False)


@contextmanager
def fail_fast() -> Iterator[None]:
    """Requests made inside give up on a silent CouchDB after the first-byte timeout."""
    token = FAIL_FAST.set(True)
    try:
        yield
    finally:
        FAIL_FAST.reset(token)


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def quote_id(doc_id: str) -> str:
    """A doc id as a path part; `_design/x` and `_local/x` keep their slash as CouchDB expects."""
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix) :], safe="")
    return quote(doc_id, safe="")


def map_client_error(exc: BaseException) -> UpstreamError:
    """The public error for a low-level one; never carries upstream URLs or exception text."""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return UpstreamTimeout("CouchDB did not answer in time")
    if isinstance(
        exc,
        aiohttp.ClientConnectorError
        | aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        return UpstreamUnavailable("CouchDB is not reachable")
    return UpstreamError("CouchDB sent an answer couchgate could not read")


MAPPED_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)


class StrayAnswer(aiohttp.ClientError):
    """An answer that belongs to an earlier request on the same connection."""


class CleanConnector(aiohttp.TCPConnector):
    """A pool that reuses a connection only if nothing is pending on it: no bytes arrived
    while it was idle (an answer nobody asked for) and its last answer was read to the end.
    aiohttp checks only that the socket is open."""

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while True:
            conn = await super()._get(key, traces)
            if conn is None or (conn.protocol is not None and not conn.protocol.should_close):
                return conn
            conn.close()  # dropped; the loop takes the next idle one, or a new connection


@dataclass(frozen=True)
class JsonResult:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def is_live_feed(path_and_query: str) -> bool:
    """A `_changes` feed that stays open (`feed=longpoll|continuous|eventsource`)."""
    feeds = parse_qs(urlsplit(path_and_query).query).get("feed", [])
    return any(feed in LIVE_FEEDS for feed in feeds)


class CouchClient:
    """Requests to CouchDB, as the service account unless told otherwise.

    Two sessions: `session` (a bounded pool) for everything that ends, and `feeds` (no
    limit) for live `_changes` feeds, which hold a connection for as long as the client
    listens. Sharing one pool, a hundred listening phones would starve every other
    request, the credential checks included."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, feeds: aiohttp.ClientSession | None = None
    ) -> None:
        self.session = session
        self.feeds = feeds if feeds is not None else session
        self.base = settings.upstream
        self.db = settings.db
        self.service_auth = basic_auth_header(settings.couch_user, settings.couch_password.get_secret_value())
        # Timeouts (README, "Timeouts"): connecting; the answer's first byte, short where a
        # phone waits (FAIL_FAST) and long elsewhere (views may take minutes to build); and the
        # longest silence inside a streamed answer once it began. Live feeds may rightly stay
        # silent until the client's own `timeout`: their end is the client's or CouchDB's.
        connect, first_byte = settings.connect_timeout, settings.first_byte_timeout
        self.idle_timeout = settings.idle_timeout
        self.json_timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout, connect=connect, sock_read=settings.request_timeout
        )
        self.fast_json_timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=first_byte)
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_read=settings.request_timeout
        )
        self.fast_stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=first_byte)
        self.feed_timeout = aiohttp.ClientTimeout(total=None, connect=connect)
        # The `X-Couch-Request-ID` of the last answer read on each pooled connection.
        self._last_answer: weakref.WeakKeyDictionary[ResponseHandler, str] = weakref.WeakKeyDictionary()

    def url(self, path: str) -> str:
        return self.base + path

    def _own(self, resp: aiohttp.ClientResponse) -> None:
        """Refuse an answer that repeats the request id of the one before it on the same
        connection: CouchDB answered that earlier request twice, and this answer is not ours."""
        request_id = resp.headers.get("X-Couch-Request-ID")
        # The connection it came on; a short answer has already given it back to the pool.
        protocol = getattr(resp, "_protocol", None)
        if request_id is None or not isinstance(protocol, ResponseHandler):
            return
        if self._last_answer.get(protocol) == request_id:
            protocol.close()  # what follows on it (this request's own answer) is out of step
            resp.close()
            raise StrayAnswer("an answer to an earlier request")
        self._last_answer[protocol] = request_id

    async def json(
        self,
        method: str,
        path: str,
        *,
        body: object | None = None,
        params: Mapping[str, str] | None = None,
        auth: str | None = None,
        headers: Mapping[str, str] | None = None,
        use_service: bool = True,
    ) -> JsonResult:
        """A JSON request; the whole (bounded) answer is read and parsed."""
        hdrs = {**JSON_HEADERS, "Accept-Encoding": "identity", **(headers or {})}
        if auth is not None:
            hdrs["Authorization"] = auth
        elif use_service:
            hdrs["Authorization"] = self.service_auth
        # A stream, not bytes: a `_bulk_docs` of a few hundred docs easily passes the size at
        # which aiohttp warns that one write of bytes blocks the event loop.
        data = None if body is None else io.BytesIO(dumps(body))
        try:
            timeout = self.fast_json_timeout if FAIL_FAST.get() else self.json_timeout
            async with self.session.request(
                method, self.url(path), data=data, params=params, headers=hdrs, timeout=timeout
            ) as resp:
                self._own(resp)
                raw = await resp.read()
                parsed = orjson.loads(raw) if raw else None
                return JsonResult(resp.status, parsed, resp.headers)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("CouchDB sent an answer couchgate could not read") from exc
        except MAPPED_ERRORS as exc:
            raise map_client_error(exc) from exc

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path_and_query: str,
        *,
        headers: Mapping[str, str],
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed request: the caller reads the body as it arrives."""
        live = is_live_feed(path_and_query)
        session = self.feeds if live else self.session
        if live:
            timeout = self.feed_timeout
        else:
            timeout = self.fast_stream_timeout if FAIL_FAST.get() else self.stream_timeout
        try:
            async with session.request(
                method,
                self.url(path_and_query),
                headers=headers,
                data=data,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding"),
            ) as resp:
                self._own(resp)
                if not live and resp.connection is not None and resp.connection.protocol is not None:
                    # The answer has begun: from now on the bound is its silences, not its start.
                    resp.connection.protocol.read_timeout = self.idle_timeout
                yield resp
        except ConnectionResetError:
            raise  # the downstream client went away while we streamed to it
        except MAPPED_ERRORS as exc:
            if isinstance(exc.__cause__, CouchgateError):
                # Raised by our own body iterator while aiohttp sent it (a body over the
                # limit is 413): aiohttp wraps it in a connection error.
                raise exc.__cause__ from None
            raise map_client_error(exc) from exc


def new_session(settings: Settings, *, feeds: bool = False) -> aiohttp.ClientSession:
    """The upstream session; `feeds`: the one for live feeds, whose pool has no limit (each
    feed is one caller listening, bounded by the callers couchgate has)."""
    limit = 0 if feeds else settings.upstream_pool_size
    connector = CleanConnector(limit=limit, enable_cleanup_closed=True)
    # DummyCookieJar: CouchDB's AuthSession cookie must never be replayed for another user.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )
