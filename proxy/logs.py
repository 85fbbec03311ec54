"""Structured JSON logs, each line carrying the id of the request it belongs to."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_plus

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
USER_NAME_KEY = web.RequestKey("user_name", str)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Query parameters whose values are never logged (names compared case-insensitively).
_SECRET_PARAM = re.compile(r"pass|pwd|token|secret|auth|credential|session|cookie|signature|api_?key", re.I)
REDACTED = "REDACTED"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname:<7} [{REQUEST_ID.get()}] {record.name}: {record.getMessage()}"


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def new_request_id(candidate: str | None) -> str:
    if candidate and _VALID_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    REQUEST_ID.set(rid)
    request[REQUEST_ID_KEY] = rid
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """For streamed responses, which must carry the id before `prepare()`."""
    response.headers[REQUEST_ID_HEADER] = request.get(REQUEST_ID_KEY, REQUEST_ID.get())


def redacted_query(raw: str) -> str:
    """A raw query string with the values of secret-looking parameters replaced."""
    pairs = []
    for pair in raw.split("&"):
        name, sep, value = pair.partition("=")
        if sep and _SECRET_PARAM.search(unquote_plus(name)):
            value = REDACTED
        pairs.append(name + sep + value)
    return "&".join(pairs)


class AccessLogger(AbstractAccessLogger):
    """One line per request, the query string included (secrets redacted). A client that
    went away before its answer was complete is logged too (see `proxy.errors`): with the
    status it was being sent, or 499 when nothing had been sent yet."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = redacted_query(request.rel_url.raw_query_string)
        target = request.rel_url.raw_path + (f"?{query}" if query else "")
        self.logger.info(
            "%s %s %s",
            request.method,
            target,
            response.status,
            extra={
                "request_id": request.get(REQUEST_ID_KEY, "-"),
                "method": request.method,
                "path": request.rel_url.raw_path,
                "query": query,
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
                "remote": request.remote,
                "user": request.get(USER_NAME_KEY),
            },
        )
