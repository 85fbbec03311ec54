"""Failures after the answer has started: the body always ends cleanly, with a row for every
doc read and the summary; never a second HTTP response inside the first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from import_support import do_import

from proxy.couch.client import CouchClient, JsonResult
from proxy.devserver.backend import PouchServer
from proxy.errors import UpstreamUnavailable
from proxy.importer import pipeline, policy

from support import Gateway, TestUser, gateway_settings, start_gateway, stop_gateway

TIMEOUT = aiohttp.ClientTimeout(total=60)


async def raw_import(gw: Gateway, path: str, auth: str, data: Any, content_type: str) -> tuple[int, bytes]:
    async with gw.http.post(gw.url + path, data=data, timeout=TIMEOUT,
                            headers={"Authorization": auth, "Content-Type": content_type}) as resp:  # fmt: skip
        return resp.status, await resp.read()


async def test_poison_docs_after_the_first_chunk(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    docs: list[Any] = [{"_id": f"z{i:03d}"} for i in range(600)]
    docs += [{"_attachments": {"a": {"data": "abc"}}}, {"_id": "deep", "a": "DEEP"}, {"_id": "after"}]
    raw = orjson.dumps(docs).replace(b'"DEEP"', b"[" * 400 + b"]" * 400)
    status, body = await raw_import(
        gateway, f"/{db}/_couchgate/import", users["alice"].auth, raw, "application/json"
    )
    assert status == 200 and b"HTTP/1.1" not in body
    answer = orjson.loads(body)
    assert [r["index"] for r in answer["results"]] == list(range(603))
    assert [r["status"] for r in answer["results"][600:]] == ["invalid", "invalid", "created"]
    assert answer["summary"] == {"created": 601, "invalid": 2}


async def test_upstream_failures_mid_import_answer_error_rows_and_a_retry_completes(
    gateway: Gateway,
    db: str,
    users: dict[str, TestUser],
    backend: PouchServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second chunk's write cannot reach CouchDB; the third chunk's read gets a 500.
    Those docs are `error` (with a reason saying to retry), the others are imported, the
    answer ends with its summary; importing again completes the job."""
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"_id": f"u{i:04d}", "v": i} for i in range(1500)]
    backend.request("POST", f"/{db}/_bulk_docs", {"docs": docs[1000:]})  # the third chunk exists already
    post, read = pipeline.Importer._post, CouchClient.json

    async def unreachable_for_chunk_two(
        self: pipeline.Importer, where: str, body: dict[str, Any]
    ) -> JsonResult:
        if body["docs"][0]["_id"] == "u0500":
            raise UpstreamUnavailable("CouchDB is not reachable")
        return await post(self, where, body)

    async def failing_read_for_chunk_three(
        self: CouchClient, method: str, where: str, **kw: Any
    ) -> JsonResult:
        asked = kw.get("body") or {}
        ids = asked.get("keys") or [d.get("id") for d in asked.get("docs") or []]
        if where.endswith(("/_all_docs", "/_bulk_get")) and "u1000" in ids:
            return JsonResult(500, {"error": "internal_server_error", "reason": "boom"}, {})
        return await read(self, method, where, **kw)

    monkeypatch.setattr(pipeline.Importer, "_post", unreachable_for_chunk_two)
    monkeypatch.setattr(CouchClient, "json", failing_read_for_chunk_three)
    for ndjson in (False, True):
        answer = await do_import(gateway, path, alice, docs, ndjson=ndjson)
        rows = answer["results"]
        assert [r["index"] for r in rows] == list(range(1500))
        assert {r["status"] for r in rows[500:]} == {"error"} and "import again" in rows[700]["reason"]
        assert {r["status"] for r in rows[:500]} <= {"created", "unchanged"}
        assert sum(answer["summary"].values()) == 1500 and answer["summary"]["error"] == 1000
    monkeypatch.undo()
    again = await do_import(gateway, path, alice, docs, ndjson=True)
    assert again["summary"] == {"unchanged": 1000, "created": 500}


async def test_after_chunks_keep_failing_the_rest_is_not_tried(
    gateway: Gateway, db: str, users: dict[str, TestUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def down(self: pipeline.Importer, where: str, body: dict[str, Any]) -> JsonResult:
        nonlocal calls
        calls += 1
        raise UpstreamUnavailable("CouchDB is not reachable")

    monkeypatch.setattr(pipeline.Importer, "_post", down)
    docs = [{"_id": f"d{i:04d}"} for i in range(3000)]
    answer = await do_import(gateway, f"/{db}/_couchgate/import", users["alice"].auth, docs, ndjson=True)
    assert answer["summary"] == {"error": 3000} and calls < 6
    assert any(r["reason"] == pipeline.NOT_TRIED for r in answer["results"])


async def test_an_unexpected_error_in_a_chunk_keeps_what_was_answered(
    gateway: Gateway,
    db: str,
    users: dict[str, TestUser],
    backend: PouchServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    backend.request("PUT", f"/{db}/boom", {"v": 0})
    same = policy.same_content

    def breaks_on_boom(imported: Any, stored: Any) -> bool:
        if imported.get("_id") == "boom":
            raise RuntimeError("a bug")
        return same(imported, stored)

    monkeypatch.setattr(policy, "same_content", breaks_on_boom)
    docs = [{"_id": f"b{i:03d}"} for i in range(600)] + [{"_id": "boom", "v": 1}, {"_id": "b999"}]
    answer = await do_import(gateway, path, alice, docs)
    rows = answer["results"]
    assert len(rows) == 602 and "a bug" not in orjson.dumps(answer).decode()
    # The first chunk's answers are kept; the failing chunk fails before it writes anything,
    # so each of its docs is `error` (import again: safe) and none of them is upstream.
    assert [r["status"] for r in rows[:500]] == ["created"] * 500
    assert {r["status"] for r in rows[500:]} == {"error"}
    assert answer["summary"] == {"created": 500, "error": 102}
    assert backend.request("GET", f"/{db}/b999")[0] == 404
    assert backend.request("GET", f"/{db}/b499")[0] == 200


async def test_a_body_that_breaks_mid_stream_ends_with_an_error_line_and_the_summary(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    gateway = await start_gateway(gateway_settings(backend, db, max_import_line_bytes=10_000))
    try:
        await _breaks_mid_stream(gateway, db, users)
    finally:
        await stop_gateway(gateway)


async def _breaks_mid_stream(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:

    async def body() -> AsyncIterator[bytes]:
        yield b"".join(orjson.dumps({"_id": f"m{i:03d}"}) + b"\n" for i in range(700))
        await asyncio.sleep(0.2)
        yield b'{"_id": "huge", "x": "' + b"x" * 20_000
        await asyncio.sleep(0.2)
        yield b'"}\n'

    status, raw = await raw_import(gateway, f"/{db}/_couchgate/import", users["alice"].auth, body(),
                                   "application/x-ndjson")  # fmt: skip
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert status == 200 and len(lines) == 702, raw[-300:]
    assert {r["status"] for r in lines[:700]} == {"created"}
    assert lines[700]["error"] == "too_large" and "longer than" in lines[700]["reason"]
    assert lines[701] == {"summary": {"created": 700}, "dry_run": False}
