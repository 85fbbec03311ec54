"""Many live feeds waiting at once: one change that concerns them all wakes every one, and
no waiter is left registered after a wake or a timeout (each waiting feed holds memory).
Real gateway, real backend."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX

from offline_data import auth
from support import Gateway, eventually

USERS = ("chw1", "chw2", "supervisor")


async def changes(gw: Gateway, db: str, user: str, query: str) -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs{query}", auth=auth(user))
    assert status == 200, body
    return dict(body)


async def test_a_global_change_wakes_every_waiting_feed(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    sync = gw.server.app[INDEX]
    since = {u: (await changes(gw, medic, u, "&since=now"))["last_seq"] for u in USERS}
    devices = [USERS[i % len(USERS)] for i in range(60)]
    polls = [
        asyncio.create_task(
            changes(gw, medic, u, f"&since={since[u]}&feed=longpoll&heartbeat=30000&timeout=60000")
        )
        for u in devices
    ]

    async def all_waiting() -> bool:
        return len(sync._waiting) == len(devices)

    assert await eventually(all_waiting, within=60)
    status, body = backend.request("PUT", f"/{medic}/form:wake", {"type": "form", "internalId": "wake"})
    assert status == 201, body
    for answer in await asyncio.gather(*polls):
        assert [r["id"] for r in answer["results"]] == ["form:wake"], answer
    assert not sync._waiting


async def test_a_feed_that_times_out_leaves_no_waiter(gw: Gateway, medic: str) -> None:
    sync = gw.server.app[INDEX]
    since = (await changes(gw, medic, "chw1", "&since=now"))["last_seq"]
    body = await changes(gw, medic, "chw1", f"&since={since}&feed=longpoll&heartbeat=100&timeout=500")
    assert body["results"] == []
    assert not sync._waiting
