"""Request bodies on their way upstream, within their limits: streamed and cut off past
`COUCHGATE_MAX_BODY_BYTES`, or read whole (a body that must be checked or audited) within
`COUCHGATE_MAX_JSON_BYTES`; past a limit the answer is 413 before anything more is sent."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from aiohttp import web

from proxy.errors import ClientGone, PayloadTooLarge
from proxy.params import collect, read_body

CHUNK = 64 * 1024


async def limited_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            yield chunk
    except ConnectionResetError as exc:
        # Not CouchDB's fault: the client left while its body was being sent upstream.
        raise ClientGone("the client went away before its request was complete") from exc


async def whole_body(request: web.Request, body: bytes | AsyncIterable[bytes] | None, limit: int) -> bytes:
    """The request body as bytes (for a body check), refused past `limit` bytes."""
    if isinstance(body, bytes):
        return body
    if body is None:
        return await read_body(request, limit)
    raw, complete = await collect(body, limit)
    if not complete:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return raw


async def in_slices(raw: bytes) -> AsyncIterator[bytes]:
    """Large bytes sent a slice at a time (aiohttp warns that one big write blocks the loop)."""
    view = memoryview(raw)
    for start in range(0, len(raw), CHUNK):
        yield bytes(view[start : start + CHUNK])


async def rest_of_body(request: web.Request, prefix: bytes, limit: int) -> AsyncIterator[bytes]:
    """`prefix`, then the rest of the request body as it arrives (refused past `limit`)."""
    async for piece in in_slices(prefix):
        yield piece
    async for chunk in limited_body(request, limit - len(prefix)):
        yield chunk
