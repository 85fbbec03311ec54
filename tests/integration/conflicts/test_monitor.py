"""The conflict monitor: the metrics gauge, the webhook, and the background resolver."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from integration.conflicts.test_conflicts import leaf, make_concurrent, make_true_conflict, write

from proxy.audit.api import NullAudit
from proxy.conflicts.monitor import ConflictMonitor
from proxy.conflicts.store import ConflictStore
from proxy.couch.client import CouchClient, new_session
from proxy.devserver.backend import PouchServer
from proxy.metrics import Metrics
from proxy.settings import load_settings

from support import basic, eventually, gateway_settings, start_gateway, stop_gateway


async def test_gauge_webhook_and_background_resolver(backend: PouchServer, db: str) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    webhook_app = web.Application()
    webhook_app.router.add_post("/hook", hook)
    target = TestServer(webhook_app, host="127.0.0.1")
    await target.start_server()
    make_concurrent(backend, db, "clean")
    make_true_conflict(backend, db, "old")
    write(backend, db, leaf("stuck", ["1-aaa"], v=1))
    settings = gateway_settings(backend, db, conflicts_interval=0.2, conflicts_auto_resolve=True,
                                conflicts_webhook_url=f"http://127.0.0.1:{target.port}/hook")  # fmt: skip
    gw = await start_gateway(settings)
    admin = basic(backend.admin_user, backend.admin_password)
    try:

        async def gauge_is(n: int) -> bool:
            status, body, _ = await gw.call("GET", "/_couchgate/metrics", auth=admin)
            return status == 200 and f"couchgate_conflicts {n:.1f}" in body.decode()

        # The clean one is merged in the background; the true conflict stays (and, counted,
        # tells that a first check has run: the gauge starts at 0).
        async def merged() -> bool:
            return "_conflicts" not in backend.request("GET", f"/{db}/clean?conflicts=true")[1]

        assert await eventually(merged)
        assert await eventually(lambda: gauge_is(1))
        _, doc = backend.request("GET", f"/{db}/clean?conflicts=true")
        assert "_conflicts" not in doc and doc["read"] == ["admin", "some_user", "other_user"]
        # A true conflict appears: it is left alone, counted, and announced.
        write(backend, db, leaf("stuck", ["2-bbb", "1-aaa"], v=2), leaf("stuck", ["2-ccc", "1-aaa"], v=3))
        assert await eventually(lambda: gauge_is(2))

        async def announced() -> bool:
            return any("stuck" in r["new"] for r in received)

        assert await eventually(announced)
        assert received[-1] == {"event": "conflicts", "db": db, "new": ["stuck"], "count": 2}
        assert backend.request("GET", f"/{db}/stuck?conflicts=true")[1]["_conflicts"]
        status, body, _ = await gw.call("GET", "/_couchgate/audit?doc=clean&action=resolve", auth=admin)
        assert status == 200 and body["entries"][0]["user"] == "couchgate"
        status, _, _ = await gw.call("GET", "/_couchgate/metrics")
        assert status == 401 or status == 403
    finally:
        await stop_gateway(gw)
        await target.close()
        await asyncio.sleep(0)


async def test_background_resolver_is_off_by_default(backend: PouchServer, db: str) -> None:
    assert load_settings().conflicts_auto_resolve is False
    make_concurrent(backend, db, "clean")
    gw = await start_gateway(gateway_settings(backend, db, conflicts_interval=0.1))
    try:
        # The gauge counts the conflict (it starts at 0): a check ran, and merged nothing.
        async def counted() -> bool:
            _, body, _ = await gw.call(
                "GET", "/_couchgate/metrics", auth=basic(backend.admin_user, backend.admin_password)
            )
            return "couchgate_conflicts 1.0" in body.decode()

        assert await eventually(counted)
        assert backend.request("GET", f"/{db}/clean?conflicts=true")[1]["_conflicts"] == ["2-bbb"]
    finally:
        await stop_gateway(gw)


async def test_a_conflict_that_does_not_merge_is_tried_once_per_leaf_set(
    backend: PouchServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_true_conflict(backend, db, "stuck")
    write(backend, db, leaf("twins", ["1-p0"], type="person"), leaf("twins", ["1-r0"], type="data_record"))
    tried: list[str] = []
    real = ConflictStore.leaves

    async def spy(self: ConflictStore, doc_id: str) -> list[dict[str, Any]]:
        tried.append(doc_id)
        return await real(self, doc_id)

    monkeypatch.setattr(ConflictStore, "leaves", spy)
    settings = gateway_settings(backend, db)
    session = new_session(settings)
    try:
        store = ConflictStore(CouchClient(session, settings), db)
        monitor = ConflictMonitor(store, Metrics(), NullAudit(), session, None, auto_resolve=True)
        await monitor.check()
        first = list(tried)
        assert sorted(set(first)) == ["stuck", "twins"]
        for _ in range(2):
            await monitor.check()
        assert tried == first  # not tried again: nothing changed
        # A leaf of one of them changes: that one is tried again, once.
        write(backend, db, leaf("stuck", ["3-ddd", "2-bbb", "1-aaa"], v=4, w=1))
        for _ in range(2):
            await monitor.check()
        again = tried[len(first) :]
        assert set(again) == {"stuck"} and again == [d for d in first if d == "stuck"]
    finally:
        await session.close()
