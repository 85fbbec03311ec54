"""The audit log when its database refuses writes or cannot be reached, when its queue
fills, and when couchgate stops: entries wait, writes wait or are refused, none is lost."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import pytest
from audit_support import audit_settings, chain_breaks, entries, stored

from proxy.couch.client import CouchClient, new_session
from proxy.devserver.backend import PouchServer, free_port
from proxy.keys import AUDIT

from support import (
    Gateway,
    TestUser,
    assert_couch_error,
    audited_gateway,
    eventually,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

BLOCK = {
    "_id": "_design/block",
    "validate_doc_update": "function () { throw({forbidden: 'audit db closed'}); }",
}


def block(backend: PouchServer, audit_db: str) -> None:
    assert backend.request("PUT", f"/{audit_db}/_design/block", BLOCK)[0] == 201


def unblock(backend: PouchServer, audit_db: str) -> None:
    _, doc = backend.request("GET", f"/{audit_db}/_design/block")
    backend.request("DELETE", f"/{audit_db}/_design/block?rev={doc['_rev']}")  # type: ignore[index]


async def readiness(gw: Gateway) -> tuple[int, dict[str, object]]:
    status, body, _ = await gw.call("GET", "/_couchgate/ready")
    return status, body


@pytest.fixture
async def queueing(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    """The audit log without intents (COUCHGATE_AUDIT_DURABLE=false): entries queue while
    the audit database cannot be written, writes go on."""
    async with audited_gateway(backend, db, audit_durable=False) as gw:
        yield gw


async def test_unwritable_audit_db_queues_entries_and_readiness_says_so(
    queueing: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    agw = queueing
    audit_db = agw.settings.audit_db
    await agw.call("PUT", f"/{db}/first", auth=users["alice"].auth, json={})
    await entries(agw, backend)  # flushed, so the database exists
    block(backend, audit_db)
    for i in range(5):
        await agw.call("PUT", f"/{db}/while-down-{i}", auth=users["alice"].auth, json={})

    async def not_ready() -> bool:
        return (await readiness(agw))[0] == 503

    async def ready() -> bool:
        return (await readiness(agw))[0] == 200

    assert await eventually(not_ready)
    status, body = await readiness(agw)
    assert_couch_error(status, body, 503, "service_unavailable")
    assert body["checks"]["audit"]["queued"] == 5 and "audit" in str(body["reason"])  # type: ignore[index]
    unblock(backend, audit_db)
    assert await eventually(ready)
    ids = sorted(e["doc_id"] for e in stored(backend, audit_db))
    assert ids == ["first"] + [f"while-down-{i}" for i in range(5)]


async def test_unreachable_audit_upstream_is_logged_and_nothing_is_lost(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], caplog: pytest.LogCaptureFixture
) -> None:
    """The audit database lives on couchgate's CouchDB; here the writer's connection to it
    is pointed at a port nobody listens on, so its writes fail as a dead server's do."""
    await agw.call("PUT", f"/{db}/first", auth=users["alice"].auth, json={})
    await entries(agw, backend)
    log = agw.server.app[AUDIT]
    dead_settings = gateway_settings(backend, db, couch_url=f"http://127.0.0.1:{free_port()}")
    session = new_session(dead_settings)
    live, log.couch = log.couch, CouchClient(session, dead_settings)  # type: ignore[attr-defined]
    try:
        with caplog.at_level(logging.ERROR, logger="couchgate.audit"):
            for i in range(3):
                await agw.call("PUT", f"/{db}/unreachable-{i}", auth=users["alice"].auth, json={})

            async def reported() -> bool:
                return (await readiness(agw))[0] == 503

            assert await eventually(reported)
        _, body = await readiness(agw)
        assert body["checks"]["audit"]["error"] == "CouchDB is not reachable"  # type: ignore[index]
        [line] = [r.getMessage() for r in caplog.records if r.name == "couchgate.audit"]
        assert re.fullmatch(
            r"audit log cannot be written \(CouchDB is not reachable\); [123] entries queued", line
        )
    finally:
        log.couch = live  # type: ignore[attr-defined]
        await session.close()

    async def ready() -> bool:
        return (await readiness(agw))[0] == 200

    assert await eventually(ready)
    ids = sorted(e["doc_id"] for e in stored(backend, agw.settings.audit_db))
    assert ids == ["first", "unreachable-0", "unreachable-1", "unreachable-2"]
    assert await chain_breaks(agw) == []


async def test_a_write_waits_for_room_in_a_full_queue_instead_of_dropping(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    # The writer flushes only when woken: by a full batch (never, here) or by a waiting write.
    settings = audit_settings(
        backend, db, audit_queue_max=4, audit_batch_size=10_000, audit_flush_interval=3600
    )
    gw = await start_gateway(settings)
    alice = users["alice"].auth
    try:
        docs = [{"_id": f"huge-{i:02d}"} for i in range(50)]  # far past the bound: all kept
        assert (await gw.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs}))[0] == 201
        log = gw.server.app[AUDIT]
        assert len(log.queue) == 50 and log.dropped == 0  # type: ignore[attr-defined]
        status, _, _ = await gw.call("PUT", f"/{db}/after", auth=alice, json={})
        assert status == 201
        # It was answered only once the writer had made room: the 50 are stored already.
        assert len(stored(backend, settings.audit_db)) >= 50
        writes = [gw.call("PUT", f"/{db}/burst-{i}", auth=alice, json={}) for i in range(10)]
        assert [s for s, _, _ in await asyncio.gather(*writes)] == [201] * 10
        assert await log.flush()  # type: ignore[attr-defined]
        assert len(stored(backend, settings.audit_db)) == 61
        assert log.health()["dropped"] == 0 and log.health()["refused"] == 0  # type: ignore[attr-defined]
        assert await chain_breaks(gw) == []
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{settings.audit_db}")


async def test_writes_are_refused_503_while_the_audit_db_is_down_and_the_queue_full(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    settings = audit_settings(backend, db, audit_queue_max=3, audit_durable=False)
    gw = await start_gateway(settings)
    alice = users["alice"].auth
    try:
        await gw.call("PUT", f"/{db}/first", auth=alice, json={})
        await entries(gw, backend)
        block(backend, settings.audit_db)
        assert (await gw.call("PUT", f"/{db}/down-0", auth=alice, json={}))[0] == 201

        async def down() -> bool:
            return (await readiness(gw))[0] == 503

        assert await eventually(down)
        for i in (1, 2):
            assert (await gw.call("PUT", f"/{db}/down-{i}", auth=alice, json={}))[0] == 201
        status, body, _ = await gw.call("PUT", f"/{db}/refused", auth=alice, json={})
        assert_couch_error(status, body, 503, "service_unavailable")
        status, body, _ = await gw.call(
            "POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": [{"_id": "r2"}]}
        )
        assert_couch_error(status, body, 503, "service_unavailable")
        assert backend.request("GET", f"/{db}/refused")[0] == 404  # refused before it was forwarded
        assert backend.request("GET", f"/{db}/r2")[0] == 404
        assert (await gw.call("GET", f"/{db}/down-0", auth=alice))[0] == 200  # reads go on
        status, ready = await readiness(gw)
        audit = ready["checks"]["audit"]  # type: ignore[index]
        assert (audit["queued"], audit["refusing_writes"], audit["refused"]) == (3, True, 2)  # type: ignore[index]
        unblock(backend, settings.audit_db)

        async def up() -> bool:
            return (await readiness(gw))[0] == 200

        assert await eventually(up)
        assert (await gw.call("PUT", f"/{db}/refused", auth=alice, json={}))[0] == 201
        await entries(gw, backend)
        ids = sorted(e["doc_id"] for e in stored(backend, settings.audit_db))
        assert ids == ["down-0", "down-1", "down-2", "first", "refused"]
        assert gw.server.app[AUDIT].health()["dropped"] == 0  # type: ignore[attr-defined]
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{settings.audit_db}")


async def test_stopping_couchgate_flushes_pending_entries(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    gw = await start_gateway(audit_settings(backend, db, audit_flush_interval=3600, audit_batch_size=10_000))
    for i in range(20):
        await gw.call("PUT", f"/{db}/pending-{i}", auth=users["alice"].auth, json={})
    assert len(gw.server.app[AUDIT].queue) == 20  # type: ignore[attr-defined]
    await stop_gateway(gw)
    try:
        assert {e["doc_id"] for e in stored(backend, gw.settings.audit_db)} == {
            f"pending-{i}" for i in range(20)
        }
    finally:
        backend.request("DELETE", f"/{gw.settings.audit_db}")
