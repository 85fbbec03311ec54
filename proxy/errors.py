"""One error tree, one middleware, CouchDB-shaped bodies.

    CouchgateError                     status  error
     ├── BadRequest                    400     bad_request
     │    ├── IllegalDatabaseName      400     illegal_database_name
     │    └── QueryParseError          400     query_parse_error
     ├── Unauthorized                  401     unauthorized   (+ WWW-Authenticate)
     ├── Forbidden                     403     forbidden
     ├── NotFound                      404     not_found
     ├── MethodNotAllowed              405     method_not_allowed
     ├── RequestTimeout                408     request_timeout
     ├── Conflict                      409     conflict
     ├── PayloadTooLarge               413     too_large
     │    └── TooManyItems             413     max_bulk_get_count_exceeded, max_bulk_docs_count_exceeded
     ├── TooManyRequests               429     too_many_requests  (+ Retry-After)
     ├── ClientGone                    499     client_closed_request (never sent: logged)
     ├── NotImplementedHere            501     not_implemented
     ├── UpstreamError                 502     bad_gateway
     │    ├── UpstreamUnavailable      503     service_unavailable
     │    ├── UpstreamTimeout          504     gateway_timeout
     │    └── (proxy.couch.docs: ReadFailed, a read of docs answered otherwise than CouchDB does)
     ├── Refused                       CouchDB's  CouchDB's: its refusal of the caller, passed on
     ├── WriteRefused                  403/409/412  forbidden, conflict, missing_stub: the write rules' answer
     └── Detailed                      any     any: a body with more than `error` and `reason`
          ├── DetailedConflict         409     conflict (proxy.conflicts: Unmergeable)
          └── (proxy.conflicts: PartlyWritten, with the status of what failed)

The middleware answers each with its `body()`: `{"error", "reason"}`, and a `Detailed`
error's details after them.

A body aiohttp cannot decode as its `Content-Encoding` says is a 400. Low-level client
errors are mapped to `UpstreamError`s in `proxy.couch.client`; anything else that escapes
a handler becomes a 500 whose body never carries exception text. A client that went away
(`ConnectionResetError`) is no error: the response under way, or a 499 ("client closed
request") if none was, goes back to aiohttp, which writes the access line for it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger("couchgate.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The response whose headers were sent, if any (set on `on_response_prepare`).
PREPARED = web.RequestKey("prepared_response", web.StreamResponse)


class CouchgateError(Exception):
    status = 500
    error = "internal_server_error"

    def __init__(self, reason: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The answer's JSON body, as CouchDB shapes an error."""
        return {"error": self.error, "reason": self.reason}


class BadRequest(CouchgateError):
    status, error = 400, "bad_request"


class QueryParseError(BadRequest):
    error = "query_parse_error"  # CouchDB's word for query parameters that do not go together


class IllegalDatabaseName(BadRequest):
    status, error = 400, "illegal_database_name"


class Unauthorized(CouchgateError):
    status, error = 401, "unauthorized"


class Forbidden(CouchgateError):
    status, error = 403, "forbidden"


class NotFound(CouchgateError):
    status, error = 404, "not_found"


class MethodNotAllowed(CouchgateError):
    status, error = 405, "method_not_allowed"


class RequestTimeout(CouchgateError):
    status, error = 408, "request_timeout"


class Conflict(CouchgateError):
    status, error = 409, "conflict"


class PayloadTooLarge(CouchgateError):
    status, error = 413, "too_large"


class TooManyItems(PayloadTooLarge):
    """More docs in one request than `max_bulk_items`: CouchDB's own answer
    (`max_bulk_get_count_exceeded`, `max_bulk_docs_count_exceeded`), the limit as reason."""

    def __init__(self, reason: str, *, error: str = PayloadTooLarge.error) -> None:
        super().__init__(reason)
        self.error = error


class TooManyRequests(CouchgateError):
    status, error = 429, "too_many_requests"

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
        self.retry_after = retry_after


class ClientGone(CouchgateError):
    """The client went away while couchgate still read its request."""

    status, error = 499, "client_closed_request"


class NotImplementedHere(CouchgateError):
    status, error = 501, "not_implemented"


class UpstreamError(CouchgateError):
    status, error = 502, "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    status, error = 503, "service_unavailable"


class UpstreamTimeout(UpstreamError):
    status, error = 504, "gateway_timeout"


class Refused(CouchgateError):
    """CouchDB's own refusal of the caller, passed on with its status, `error` and `reason`
    (a database the caller may not read: 401 or 403; one that does not exist: 404)."""

    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {}
        super().__init__(str(body.get("reason") or "You are not allowed to access this db."))
        self.status = status
        self.error = str(body.get("error") or ("unauthorized" if status == 401 else "forbidden"))


class WriteRefused(CouchgateError):
    """An offline user's write the write rules refused (`proxy.access.write`), answered with
    the status, `error` and reason the rule's decision gives the client (403 `forbidden`,
    409 `conflict`, 412 `missing_stub`). The refused doc has its audit entry already, so the
    audit middleware, which records a `Forbidden` request as denied, does not record it."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error


class Detailed(CouchgateError):
    """An error whose body carries more than `error` and `reason` (what was written, which
    fields clashed), after them."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.details = details

    def body(self) -> dict[str, Any]:
        return {**super().body(), **self.details}


class DetailedConflict(Detailed, Conflict):
    pass


def dumps(value: object) -> bytes:
    """JSON bytes of `value`. orjson writes at most 254 levels of nesting; CouchDB stores
    deeper docs, so those are written by the standard library instead (a value too deep
    even for it, or not JSON at all, is a bad request)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (RecursionError, ValueError, TypeError):
            raise BadRequest("the JSON is nested too deeply, or holds values JSON cannot") from exc


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json", headers=headers)


WHOLE_BELOW = 1 << 20  # a `json_rows` answer smaller than this is sent as one body
ROWS_CHUNK = 1 << 18


async def json_rows(
    request: web.Request, head: bytes, rows: Sequence[object], tail: bytes
) -> web.StreamResponse:
    """`head`, the rows comma-separated, `tail`: an answer of many rows written as it goes,
    each distinct row object serialized once. A short request body may name one doc
    thousands of times (`_bulk_get`, `_all_docs` keys): written whole, the answer would be
    thousands of copies in memory; written in chunks, one chunk at a time waits for the
    client. Everything is serialized before the answer begins, so nothing fails midway."""
    encoded: dict[int, bytes] = {}
    parts = []
    for row in rows:
        part = encoded.get(id(row))  # the rows are alive in `rows`: no id is reused meanwhile
        if part is None:
            part = encoded[id(row)] = dumps(row)
        parts.append(part)
    total = len(head) + len(tail) + sum(len(p) for p in parts) + max(len(parts) - 1, 0)
    if total < WHOLE_BELOW:
        return web.Response(body=head + b",".join(parts) + tail, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = total
    await response.prepare(request)
    chunk, size = [head], len(head)
    for i, part in enumerate(parts):
        if i:
            chunk.append(b",")
        chunk.append(part)
        size += len(part) + 1
        if size >= ROWS_CHUNK:
            await response.write(b"".join(chunk))
            chunk, size = [], 0
    chunk.append(tail)
    await response.write(b"".join(chunk))
    await response.write_eof()
    return response


def error_response(
    status: int, error: str, reason: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": error, "reason": reason}, status=status, headers=headers)


_HTTP_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    412: "precondition_failed",
    413: "too_large",
    415: "bad_content_type",
    416: "requested_range_not_satisfiable",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_server_error",
    504: "gateway_timeout",
}


async def remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    request[PREPARED] = response


def error_name(status: int) -> str:
    """CouchDB's `error` for an HTTP status."""
    return _HTTP_ERRORS.get(status, "error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CouchgateError as exc:
        if exc.status >= 500:
            log.warning("upstream problem: %s", exc.reason, extra={"error": exc.error})
        return json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = error_name(exc.status)
        reason = exc.reason if exc.status != 404 else "missing"
        kept = {"allow", "www-authenticate", "retry-after"}
        headers = {k: v for k, v in exc.headers.items() if k.lower() in kept}
        return error_response(exc.status, error, reason, headers)
    except RequestPayloadError:
        # aiohttp could not decode the body as its Content-Encoding says (a "gzip" that is not).
        # The rest of the body is not read (the stream ends here) and the connection closes.
        request.content.feed_eof()
        request.protocol.close()
        response = error_response(400, "bad_request", "the request body does not match its Content-Encoding")
        response.force_close()
        return response
    except ConnectionResetError:
        # The client went away: nothing left to answer, and nothing wrong. aiohttp finds
        # the connection gone when it finishes this response, and logs the access.
        log.debug("the client went away before its answer was complete")
        prepared = request.get(PREPARED)
        return prepared if prepared is not None else web.Response(status=ClientGone.status)
    except Exception:
        log.exception("unhandled error")
        return error_response(500, "internal_server_error", "couchgate could not complete the request")
