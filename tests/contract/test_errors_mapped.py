"""Every low-level upstream failure maps to a public, CouchDB-shaped error."""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy import errors
from proxy.couch.client import MAPPED_ERRORS, map_client_error


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= all_subclasses(sub)
    return found


CLIENT_ERRORS = sorted(
    (c for c in all_subclasses(aiohttp.ClientError) if c.__module__.startswith("aiohttp")),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("exc_type", CLIENT_ERRORS, ids=lambda c: c.__name__)
def test_every_aiohttp_client_error_is_mapped(exc_type: type[BaseException]) -> None:
    assert issubclass(exc_type, MAPPED_ERRORS)
    exc = exc_type.__new__(exc_type)  # constructors differ; the mapping looks at the type only
    mapped = map_client_error(exc)
    assert isinstance(mapped, errors.UpstreamError)
    assert mapped.status in (502, 503, 504)
    assert mapped.reason and "http" not in mapped.reason


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (aiohttp.ServerDisconnectedError(), 503, "service_unavailable"),
        (ConnectionRefusedError(), 503, "service_unavailable"),
        (TimeoutError(), 504, "gateway_timeout"),
        (aiohttp.ClientPayloadError("cut"), 502, "bad_gateway"),
    ],
)
def test_mapping_targets(exc: BaseException, status: int, error: str) -> None:
    mapped = map_client_error(exc)
    assert (mapped.status, mapped.error) == (status, error)


ERROR_CLASSES = [
    c
    for _, c in inspect.getmembers(errors, inspect.isclass)
    # CouchDB's words, and the write rules': below
    if issubclass(c, errors.CouchgateError) and c not in (errors.Refused, errors.WriteRefused)
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
async def test_every_error_class_renders_couchdb_shaped(cls: type[errors.CouchgateError]) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise cls("some reason")

    response = await errors.error_middleware(make_mocked_request("GET", "/x"), handler)
    assert isinstance(response, web.Response)
    assert response.status == cls.status
    assert response.content_type == "application/json"
    assert response.body is not None
    import orjson

    assert orjson.loads(response.body) == {"error": cls.error, "reason": "some reason"}


async def test_unexpected_exception_is_500_without_details() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise RuntimeError("secret http://admin:pw@couch:5984 detail")

    response = await errors.error_middleware(make_mocked_request("GET", "/x"), handler)
    assert isinstance(response, web.Response) and response.status == 500
    assert response.body is not None and b"secret" not in bytes(response.body)


async def rendered(exc: errors.CouchgateError) -> web.Response:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    response = await errors.error_middleware(make_mocked_request("GET", "/x"), handler)
    assert isinstance(response, web.Response) and response.content_type == "application/json"
    return response


@pytest.mark.parametrize(
    ("status", "couchdb_said", "sent"),
    [
        (401, {"error": "unauthorized", "reason": "Name or password is incorrect."},
         b'{"error":"unauthorized","reason":"Name or password is incorrect."}'),
        (404, {"error": "not_found", "reason": "Database does not exist."},
         b'{"error":"not_found","reason":"Database does not exist."}'),
        (401, "not an object", b'{"error":"unauthorized","reason":"You are not allowed to access this db."}'),
        (403, {}, b'{"error":"forbidden","reason":"You are not allowed to access this db."}'),
    ],
)  # fmt: skip
async def test_couchdbs_refusal_is_passed_on_as_it_said_it(
    status: int, couchdb_said: object, sent: bytes
) -> None:
    response = await rendered(errors.Refused(status, couchdb_said))
    assert (response.status, response.body) == (status, sent)


async def test_a_detailed_error_says_more_after_error_and_reason() -> None:
    response = await rendered(errors.DetailedConflict("nothing was written", fields=[["a", "b"]]))
    sent = b'{"error":"conflict","reason":"nothing was written","fields":[["a","b"]]}'
    assert (response.status, response.body) == (409, sent)


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(403, "forbidden", "the document is outside your replication scope"),
     (409, "conflict", "Document update conflict."),
     (412, "missing_stub", "Invalid attachment stub in p1 for lab.txt")],
)  # fmt: skip
async def test_a_write_rules_refusal_is_answered_in_its_decisions_words(
    status: int, error: str, reason: str
) -> None:
    response = await rendered(errors.WriteRefused(status, error, reason))
    sent = b'{"error":"' + error.encode() + b'","reason":"' + reason.encode() + b'"}'
    assert (response.status, response.body) == (status, sent)
