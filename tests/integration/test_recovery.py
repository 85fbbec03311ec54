"""CouchDB going away and coming back: live feeds hear of changes as soon as it answers again,
readiness tells the present, and nothing waits without a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from proxy.audit.log import AuditLog
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT, INDEX

from offline_data import DOCS, PASSWORD, USERS, auth, lineage
from support import Gateway, assert_couch_error, eventually, gateway_settings, start_gateway, stop_gateway


@pytest.fixture
def disk_backend() -> Iterator[PouchServer]:
    """A backend of its own, on disk, with the offline users' data: it can be killed, paused
    and brought back with its data."""
    server = PouchServer(in_memory=False).start()
    assert server.request("PUT", "/medic")[0] == 201
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["chw"]}}
    assert server.request("PUT", "/medic/_security", security)[0] == 200
    status, body = server.request("POST", "/medic/_bulk_docs", {"docs": [dict(d) for d in DOCS]})
    assert status == 201, body
    for name, fields in USERS.items():
        user = {"_id": f"org.couchdb.user:{name}", "name": name, "password": PASSWORD.format(name),
                "type": "user", **fields}  # fmt: skip
        assert server.request("PUT", f"/_users/org.couchdb.user:{name}", user)[0] == 201
    try:
        yield server
    finally:
        if server._proc is not None and server._proc.poll() is None:
            os.killpg(server._proc.pid, signal.SIGCONT)  # a paused one must be able to stop
        server.stop()


@pytest.fixture
async def gw(disk_backend: PouchServer) -> AsyncIterator[Gateway]:
    # Credentials are trusted for the whole test, so a waiting feed does not need CouchDB to
    # check them again; the audit writer's own schedule is an hour (readiness must not wait for it).
    settings = gateway_settings(
        disk_backend, "medic", auth_cache_seconds=3600, audit_flush_interval=3600, first_byte_timeout=2
    )
    gateway = await start_gateway(settings)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


async def feed(gw: Gateway, query: str) -> tuple[int, Any]:
    status, body, _ = await gw.call("GET", f"/medic/_changes?style=all_docs{query}", auth=auth("chw1"))
    return status, body


async def ready(gw: Gateway) -> bool:
    return (await gw.call("GET", "/_couchgate/ready"))[0] == 200


async def test_a_waiting_live_feed_hears_of_a_change_once_couchdb_answers_again(
    gw: Gateway, disk_backend: PouchServer
) -> None:
    status, body = await feed(gw, "")
    assert status == 200, body
    query = f"&since={body['last_seq']}&feed=longpoll&heartbeat=500&timeout=120000"
    longpoll = await gw.http.get(
        f"{gw.url}/medic/_changes?style=all_docs{query}", headers={"Authorization": auth("chw1")}
    )
    assert longpoll.status == 200  # the feed is open and waiting before CouchDB goes away
    waiting = asyncio.create_task(longpoll.read())
    sync = gw.server.app[INDEX]
    await asyncio.to_thread(disk_backend.kill)
    assert await eventually(lambda: _async(sync.failing is not None), within=30)
    # Long enough down that a doubling backoff (0.5, 1, 2, ... s) would now wait 30 s or more.
    assert await eventually(lambda: _async(sync.probes >= 8), within=60)
    assert not await ready(gw)
    await asyncio.to_thread(disk_backend.restart)
    new = {
        "type": "data_record",
        "form": "v",
        "fields": {"patient_id": "1001"},
        "contact": lineage("chw1_person", "area1"),
    }
    assert disk_backend.request("PUT", "/medic/r_after_outage", new)[0] == 201
    done, _ = await asyncio.wait([waiting], timeout=10)
    assert done, "the waiting feed did not hear of the change within 10 s of CouchDB answering"
    body = orjson.loads(waiting.result())
    longpoll.release()
    assert [r["id"] for r in body["results"]] == ["r_after_outage"], body
    assert await eventually(lambda: ready(gw), within=10)


async def test_readiness_asks_the_audit_database_again_instead_of_waiting_for_the_writer(
    gw: Gateway, disk_backend: PouchServer
) -> None:
    log = gw.server.app[AUDIT]
    assert isinstance(log, AuditLog)
    await asyncio.to_thread(disk_backend.kill)
    assert not await log.flush()  # the writer's attempt fails; its next one is an hour away
    status, body, _ = await gw.call("GET", "/_couchgate/ready")
    assert_couch_error(status, body, 503, "service_unavailable")
    await asyncio.to_thread(disk_backend.restart)
    assert await eventually(lambda: ready(gw), within=10)
    _, body, _ = await gw.call("GET", "/_couchgate/ready")
    assert body["checks"]["audit"]["error"] is None and body["checks"]["index"] == "ok"


async def test_a_paused_couchdb_gets_answers_within_deadlines(gw: Gateway, disk_backend: PouchServer) -> None:
    """SIGSTOP: connections are accepted but nothing answers. Readiness says so within its
    second; an offline user's sync request is 503 after the first-byte timeout (2 s here),
    not the request timeout (300 s); both recover when CouchDB goes on."""
    assert await eventually(lambda: ready(gw), within=10)
    status, body = await feed(gw, "")
    assert status == 200, body
    assert disk_backend._proc is not None
    os.killpg(disk_backend._proc.pid, signal.SIGSTOP)
    try:
        status, body, _ = await asyncio.wait_for(gw.call("GET", "/_couchgate/ready"), 5)
        assert_couch_error(status, body, 503, "service_unavailable")
        status, body = await asyncio.wait_for(feed(gw, "&since=0"), 20)
        assert_couch_error(status, body, 503, "service_unavailable")
    finally:
        os.killpg(disk_backend._proc.pid, signal.SIGCONT)
    assert await eventually(lambda: ready(gw), within=30)
    status, body = await feed(gw, "")
    assert status == 200, body


async def _async(value: bool) -> bool:
    return value
