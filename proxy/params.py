"""Query parameters and bounded JSON bodies, read the same way by every endpoint."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from itertools import accumulate
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from proxy.errors import BadRequest, PayloadTooLarge

# How deeply a JSON body may nest: far beyond any CHT doc, and within what couchgate (and
# every JSON library on the way) writes back without recursing too deep.
MAX_JSON_DEPTH = 200
DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
# A JSON string (the loop unrolled: twice as fast as `"(?:[^"\\]|\\.)*"` on a push's batch).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


# orjson writes at most this many nested arrays and objects (and refuses more).
ORJSON_DEPTH = 254


def too_deep(value: Any) -> bool:
    """Whether parsed JSON nests deeper than MAX_JSON_DEPTH, in one pass at C speed: the
    value wrapped in ORJSON_DEPTH - MAX_JSON_DEPTH more arrays fails to write exactly when
    it nests deeper (what orjson parses it also writes, but for depth)."""
    wrapped = value
    for _ in range(ORJSON_DEPTH - MAX_JSON_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False


def json_depth(raw: bytes) -> int:
    """How deeply the JSON text nests (brackets inside strings do not count); cheap when
    the text holds fewer brackets than the limit, linear otherwise."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return MAX_JSON_DEPTH
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(memoryview(brackets).cast("b")), default=0)


# The largest integer a parameter may hold: JSON numbers beyond it lose precision in
# JavaScript clients, and orjson cannot write integers past 64 bits.
MAX_INT = 2**53 - 1


def nonneg_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a non-negative integer") from exc
    if not 0 <= number <= MAX_INT:
        raise BadRequest(f"{name} must be a non-negative integer of at most {MAX_INT}")
    return number


def limit_of(value: str | None, default: int, most: int) -> int:
    """A `limit` parameter: 1 to `most` (400 otherwise, as the OpenAPI spec says), `default`
    when absent."""
    limit = nonneg_int(value, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= most:
        raise BadRequest(f"limit must be between 1 and {most}")
    return limit


def true(value: str | None) -> bool:
    return value is not None and value.lower() == "true"


def flag(query: MultiMapping[str], name: str, default: bool) -> bool:
    """A boolean parameter that decides whether something is written: `true` or `false`,
    given once; anything else refused (`dry_run=1`, or `dry_run=true&dry_run=false`, must
    not quietly mean a real write)."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name} may be given only once")
    value = values[0] if values else None
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return true(value)


async def collect(chunks: AsyncIterable[bytes], limit: int) -> tuple[bytes, bool]:
    """The chunks joined, and True, while they stay within `limit` bytes; else what was read
    up to the first chunk past it, and False (the rest is left unread)."""
    raw = bytearray()
    async for chunk in chunks:
        raw += chunk
        if len(raw) > limit:
            return bytes(raw), False
    return bytes(raw), True


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    raw, complete = await collect(request.content.iter_chunked(64 * 1024), limit)
    if not complete:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return raw


async def read_json(request: web.Request, limit: int, *, empty: Any = None) -> Any:
    """The request body parsed as JSON, refused past `limit` bytes; `empty` for no body."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty is not None:
            return empty
        raise BadRequest("request body must be JSON")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if json_depth(raw) > MAX_JSON_DEPTH:  # past orjson's own depth limit
            raise BadRequest(DEEP) from exc
        raise BadRequest("invalid UTF-8 JSON") from exc
    if too_deep(value):
        raise BadRequest(DEEP)
    return value
