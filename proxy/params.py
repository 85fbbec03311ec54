"""Query parameters and bounded JSON bodies, read the same way by every endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import BadRequest, PayloadTooLarge


def nonneg_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a non-negative integer") from exc
    if number < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
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


def flag(value: str | None, name: str, default: bool) -> bool:
    """A boolean parameter that decides whether something is written: `true` or `false`,
    anything else refused (`dry_run=1` must not quietly mean a real write)."""
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
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid UTF-8 JSON") from exc
