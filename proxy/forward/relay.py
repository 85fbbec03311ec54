"""The transparent reverse proxy for callers couchgate lets through to CouchDB.

Methods, query strings, bodies and status codes are preserved; bodies stream both ways
(attachments and endless `_changes` feeds are never buffered); hop-by-hop headers are
dropped; `Location` is rewritten to couchgate's address.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from proxy.access.paths import BadPath, CouchPath
from proxy.clients import client_view
from proxy.couch.client import LIVE_FEEDS, MAPPED_ERRORS
from proxy.errors import BadRequest, PayloadTooLarge
from proxy.forward.limits import limited_body, whole_body
from proxy.keys import COUCH, SETTINGS
from proxy.logs import stamp_request_id

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
# Credentials are never copied from the client blindly: each principal gets its own.
# The only client headers forwarded to CouchDB (see `upstream_request_headers`): content
# negotiation, the body's framing and type, revisions and ranges, COPY's destination.
FORWARDED_REQUEST_HEADERS = frozenset({
    "accept", "accept-encoding", "content-type", "content-length", "content-md5",
    "destination", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
    "range", "user-agent", "x-couch-full-commit",
})  # fmt: skip
log = logging.getLogger("couchgate.proxy")


def hop_by_hop(headers: CIMultiDictProxy[str]) -> set[str]:
    """The fixed hop-by-hop headers and those the `Connection` header names (RFC 9110 7.6.1)."""
    named = {part.strip().lower() for value in headers.getall("Connection", []) for part in value.split(",")}
    return HOP_BY_HOP | (named - {""})


def parse_path(request: web.Request) -> CouchPath:
    try:
        return CouchPath.parse(request.rel_url.raw_path)
    except BadPath as exc:
        raise BadRequest(str(exc)) from exc


def upstream_request_headers(request: web.Request, credentials: dict[str, str]) -> CIMultiDict[str]:
    """What CouchDB receives with a request: the client's headers that CouchDB's protocol
    needs (an allow-list), the credentials couchgate chose, and `X-Forwarded-*` as couchgate
    sees the client. Nothing else the client sent goes upstream: CouchDB's proxy
    authentication reads `X-Auth-CouchDB-*` (or whatever names its config gives), and
    forwarding headers decide the URLs it builds, so no such header may come from a caller."""
    headers: CIMultiDict[str] = CIMultiDict()
    dropped = hop_by_hop(request.headers)
    if "Content-Encoding" in request.headers:
        # aiohttp has decoded the body already: what goes upstream is the decoded body, so
        # neither the encoding (CouchDB would decode it again: a body couchgate judged
        # as one thing would be written as another) nor the encoded length goes with it.
        dropped = dropped | {"content-length"}
    for key, value in request.headers.items():
        lower = key.lower()
        if lower in FORWARDED_REQUEST_HEADERS and lower not in dropped:
            headers.add(key, value)
    headers.update(credentials)
    if request.query.get("feed") in LIVE_FEEDS:
        # Compressed live feeds stall heartbeats behind the compressor's buffer.
        headers["Accept-Encoding"] = "identity"
    view = client_view(request)
    if view.address:
        headers["X-Forwarded-For"] = view.address
    headers["X-Forwarded-Proto"] = view.scheme
    if view.host is not None:
        headers["X-Forwarded-Host"] = view.host
    return headers


def public_base(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    if configured is not None:
        return str(configured).rstrip("/")
    view = client_view(request)
    return f"{view.scheme}://{view.host or request.host}"


def is_attachment(path: CouchPath) -> bool:
    """A doc's attachment (design docs' functions, `_view` and the like, start with `_`)."""
    return path.doc_id is not None and bool(path.rest) and not path.rest[0].startswith("_")


def rebuilt_query(params: Mapping[str, str] | MultiMapping[str]) -> str:
    """A query string built from parsed parameters, never the client's raw one: what
    CouchDB reads is what couchgate read (`a=1;b=2`, `+`, `%00`, doubled keys...)."""
    items = list(params.items())
    return "?" + urlencode(items, quote_via=quote, safe="") if items else ""


AnswerHook = Callable[[int, bytes], None]
# A check the whole request body passes before it is sent; it answers the body to send.
BodyCheck = Callable[[bytes], Awaitable[bytes]]
CAPTURE_LIMIT = 1024 * 1024


async def forward(
    request: web.Request,
    path: CouchPath,
    credentials: dict[str, str],
    *,
    body: bytes | AsyncIterable[bytes] | None = None,
    check: BodyCheck | None = None,
    on_answer: AnswerHook | None = None,
    capture_limit: int = CAPTURE_LIMIT,
    query: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream the request to CouchDB and its answer back. `body`: send this instead of the
    request's own (already read, or partly read, by the caller); `check`: the whole body
    (within the JSON limit) goes through it first, and what it answers is sent (a token
    caller's, `proxy.forward.acting`); `on_answer`: called at the
    end with the status and the first `capture_limit` bytes of the answer (for the audit log);
    `query`: the parameters to send (default: the request's, as couchgate parsed them)."""
    settings = request.app[SETTINGS]
    couch = request.app[COUCH]
    declared = request.content_length
    if declared is not None and declared > settings.max_body_bytes:
        raise PayloadTooLarge(f"request body is larger than {settings.max_body_bytes} bytes")
    target = path.encoded() + rebuilt_query(request.query if query is None else query)
    if check is not None:
        body = await check(await whole_body(request, body, settings.max_json_bytes))
    if body is not None:
        data: Any = body
    else:
        data = limited_body(request, settings.max_body_bytes) if request.body_exists else None
    headers = upstream_request_headers(request, credentials)
    if isinstance(data, bytes):
        headers.popall("Content-Length", None)  # a body given here is measured afresh
    if on_answer is not None:
        headers["Accept-Encoding"] = "identity"  # the audit log reads this answer
    own_credentials = credentials.get("Authorization") != couch.service_auth
    async with couch.stream(request.method, target, headers=headers, data=data) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        dropped = hop_by_hop(upstream.headers)
        for key, value in upstream.headers.items():
            lower = key.lower()
            if lower in dropped or lower.startswith("access-control-"):
                continue  # CORS is couchgate's own (see middlewares), never CouchDB's
            if lower == "set-cookie" and not own_credentials:
                continue
            if lower == "location" and value.startswith(couch.base):
                value = public_base(request) + value[len(couch.base) :]
            response.headers.add(key, value)
        if is_attachment(path):
            # Stored content is anyone's: never let it run as a page of couchgate's origin
            # (CouchDB 3 sends the same sandbox; pouchdb-server sends none).
            response.headers["Content-Security-Policy"] = "sandbox"
            response.headers["X-Content-Type-Options"] = "nosniff"
        if upstream.content_length is None and request.method != "HEAD":
            if request.version >= HttpVersion11:
                response.enable_chunked_encoding()
            else:
                # HTTP/1.0 has no chunked encoding: the end of the body is the connection's end.
                response.force_close()
        stamp_request_id(request, response)
        captured = bytearray()
        client_gone = False
        try:
            await response.prepare(request)
        except ConnectionResetError:
            client_gone = True
        try:
            if request.method != "HEAD":
                client_gone = await _relay(
                    upstream, response, captured if on_answer else None, client_gone, capture_limit
                )
            if not client_gone:
                await response.write_eof()
        except MAPPED_ERRORS:
            # Headers are sent: all a proxy can do is cut the client off, as upstream did.
            log.warning("upstream broke off a streamed response", extra={"path": target})
            if request.transport is not None:
                request.transport.close()
            return response
        except ConnectionResetError:
            client_gone = True
        finally:
            # A write happened upstream whether or not its caller stayed to hear the answer.
            if on_answer is not None:
                on_answer(upstream.status, bytes(captured))
        if client_gone:
            raise ConnectionResetError("the client went away")
        return response


async def _relay(
    upstream: Any, response: web.StreamResponse, captured: bytearray | None, client_gone: bool, limit: int
) -> bool:
    """Copy the answer to the client; with `captured`, keep (the first `limit` bytes of) it too, and
    read it to the end even if the client leaves, so the audit log sees the outcome."""
    async for chunk in upstream.content.iter_any():
        if captured is not None and len(captured) < limit:
            captured += chunk
        if not client_gone:
            try:
                await response.write(chunk)
            except ConnectionResetError:
                client_gone = True
                if captured is None:
                    return True
    return client_gone
