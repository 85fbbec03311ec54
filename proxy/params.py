"""Query parameters and bounded JSON bodies, read the same way by every endpoint."""

from __future__ import annotations

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


def true(value: str | None) -> bool:
    return value is not None and value.lower() == "true"


async def read_json(request: web.Request, limit: int, *, empty: Any = None) -> Any:
    """The request body parsed as JSON, refused past `limit` bytes; `empty` for no body."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        if empty is not None:
            return empty
        raise BadRequest("request body must be JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid UTF-8 JSON") from exc
