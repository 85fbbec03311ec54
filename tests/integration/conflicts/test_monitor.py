"""The conflict monitor: the metrics gauge, the webhook, and the background resolver."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from integration.conflicts.test_conflicts import leaf, make_concurrent, write

from proxy.devserver.backend import PouchServer

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
    write(backend, db, leaf("stuck", ["1-aaa"], v=1))
    settings = gateway_settings(backend, db, conflicts_interval=0.2, conflicts_auto_resolve=True,
                                conflicts_webhook_url=f"http://127.0.0.1:{target.port}/hook")  # fmt: skip
    gw = await start_gateway(settings)
    admin = basic(backend.admin_user, backend.admin_password)
    try:

        async def gauge_is(n: int) -> bool:
            status, body, _ = await gw.call("GET", "/_couchgate/metrics", auth=admin)
            return status == 200 and f"couchgate_conflicts {n:.1f}" in body.decode()

        # The clean one is merged in the background; nothing else is conflicted.
        async def merged() -> bool:
            return "_conflicts" not in backend.request("GET", f"/{db}/clean?conflicts=true")[1]

        assert await eventually(merged)
        assert await eventually(lambda: gauge_is(0))
        _, doc = backend.request("GET", f"/{db}/clean?conflicts=true")
        assert "_conflicts" not in doc and doc["read"] == ["admin", "some_user", "other_user"]
        # A true conflict appears: it is left alone, counted, and announced.
        write(backend, db, leaf("stuck", ["2-bbb", "1-aaa"], v=2), leaf("stuck", ["2-ccc", "1-aaa"], v=3))
        assert await eventually(lambda: gauge_is(1))

        async def announced() -> bool:
            return any("stuck" in r["new"] for r in received)

        assert await eventually(announced)
        assert received[-1]["db"] == db and received[-1]["count"] == 1
        assert backend.request("GET", f"/{db}/stuck?conflicts=true")[1]["_conflicts"]
        status, body, _ = await gw.call("GET", "/_couchgate/audit?doc=clean&action=resolve", auth=admin)
        assert status == 200 and body["entries"][0]["user"] == "couchgate"
        status, _, _ = await gw.call("GET", "/_couchgate/metrics")
        assert status == 401 or status == 403
    finally:
        await stop_gateway(gw)
        await target.close()
        await asyncio.sleep(0)
