"""Reading an import body into numbered items: JSON (array, `{"docs"}`, `{"rows"}`, or one
doc: a top-level object with an `_id` is always a doc) parsed whole within the JSON limit,
NDJSON streamed line by line in bounded memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import BadRequest, PayloadTooLarge
from proxy.params import read_body

NDJSON_TYPES = {"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson"}


class BadLine:
    """An NDJSON line that is not JSON: reported as an invalid item, the rest goes on."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def is_ndjson(request: web.Request) -> bool:
    return request.content_type in NDJSON_TYPES


async def items(request: web.Request, json_limit: int, line_limit: int) -> AsyncIterator[Any]:
    if is_ndjson(request):
        async for item in _ndjson(request, line_limit):
            yield item
        return
    raw = await read_body(request, json_limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the body is not JSON (send application/x-ndjson for one doc per line)") from exc
    if isinstance(body, list):
        docs: Any = body
    elif isinstance(body, dict) and "_id" in body:
        docs = [body]  # one doc, even if it has a field named `docs` or `rows`
    elif isinstance(body, dict) and isinstance(body.get("docs"), list):
        docs = body["docs"]
    elif isinstance(body, dict) and isinstance(body.get("rows"), list):
        docs = body["rows"]
    elif isinstance(body, dict):
        docs = [body]
    else:
        raise BadRequest('expected an array of docs, {"docs": [...]} or {"rows": [...]}')
    for doc in docs:
        yield doc


async def _ndjson(request: web.Request, line_limit: int) -> AsyncIterator[Any]:
    buffer = bytearray()
    async for chunk in request.content.iter_chunked(256 * 1024):
        buffer += chunk
        if len(buffer) > line_limit and b"\n" not in buffer:
            raise PayloadTooLarge(f"an NDJSON line is longer than {line_limit} bytes")
        *lines, rest = bytes(buffer).split(b"\n")
        buffer = bytearray(rest)
        for line in lines:
            if line.strip():
                yield _parse(line)
    if buffer.strip():
        yield _parse(bytes(buffer))


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return BadLine("this line is not JSON")
