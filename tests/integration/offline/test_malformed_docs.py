"""One malformed doc must not break sync for every offline user: not the feed, not the
index follower, not a rebuild at restart, not a write of such a doc."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX

from offline_data import CHW1_READS, auth
from support import Gateway, gateway_settings, start_gateway, stop_gateway

WEIRD: list[dict[str, Any]] = [
    {"_id": "weird-list", "type": []},
    {"_id": "weird-object", "type": {"x": 1}},
    {"_id": "weird-report", "type": "data_record", "fields": [], "contact": 5, "patient_id": ["1001"]},
    {"_id": "weird-person", "type": "person", "parent": "house1", "patient_id": {"a": 1}},
    {"_id": "weird-contact", "type": "contact", "contact_type": ["person"], "parent": {"_id": []}},
    {"_id": "weird-task", "type": "task", "user": ["org.couchdb.user:chw1"], "owner": {}},
    {
        "_id": "weird-signoff",
        "type": "data_record",
        "fields": {"needs_signoff": {}, "private": []},
        "contact": {"_id": 3, "parent": "x"},
    },
]


async def feed(gw: Gateway, db: str, query: str = "") -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs{query}", auth=auth("chw1"))
    assert status == 200, body
    return dict(body)


async def test_weird_docs_upstream_leave_every_feed_working(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    since = (await feed(gw, medic))["last_seq"]
    status, body = backend.request("POST", f"/{medic}/_bulk_docs", {"docs": WEIRD})
    assert status == 201 and all("error" not in r for r in body), body
    after = await feed(gw, medic, f"&since={since}")
    assert after["results"] == []
    assert {r["id"] for r in (await feed(gw, medic))["results"]} == CHW1_READS
    status, body, _ = await gw.call("GET", f"/{medic}/_all_docs", auth=auth("chw1"))
    assert status == 200 and {r["id"] for r in body["rows"]} == CHW1_READS

    # Later docs still arrive, and a live feed still wakes for them (the follower lives).
    async def write_later() -> None:
        await asyncio.sleep(0.3)
        backend.request("PUT", f"/{medic}/r_later", {"type": "data_record", "fields": {"patient_id": "1001"}})

    writer = asyncio.create_task(write_later())
    body = await feed(gw, medic, f"&since={after['last_seq']}&feed=longpoll&timeout=20000")
    await writer
    assert [r["id"] for r in body["results"]] == ["r_later"]

    # A couchgate started now builds its index through the weird docs.
    restarted = await start_gateway(gateway_settings(backend, medic))
    try:
        body = await feed(restarted, medic)
    finally:
        await stop_gateway(restarted)
    assert {r["id"] for r in body["results"]} == CHW1_READS | {"r_later"}


async def test_offline_writes_of_weird_docs_are_refused_per_doc(gw: Gateway, medic: str) -> None:
    docs = [{**d, "_id": f"mine-{d['_id']}"} for d in WEIRD]
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": docs})
    assert status == 201, body
    assert [(r["id"], r["error"]) for r in body] == [(d["_id"], "forbidden") for d in docs]
    status, body, _ = await gw.call("PUT", f"/{medic}/mine", auth=auth("chw1"), json={"type": []})
    assert (status, body["error"]) == (403, "forbidden")


async def test_a_row_the_index_cannot_file_is_skipped_not_fatal(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong with one row (here: a bug simulated in the index), the others are
    filed, that doc is readable by no one, and the follower keeps waking live feeds."""
    since = (await feed(gw, medic))["last_seq"]
    index = gw.server.app[INDEX].index
    apply = index.apply

    def broken_for_one(doc: Any, *args: Any, **kwargs: Any) -> None:
        if doc.get("_id") == "r_poison" and not doc.get("_deleted") and "type" in doc:
            raise RuntimeError("simulated bug")
        apply(doc, *args, **kwargs)

    monkeypatch.setattr(index, "apply", broken_for_one)
    poison = {"_id": "r_poison", "type": "data_record", "fields": {"patient_id": "1001"}}
    good = {"_id": "r_good", "type": "data_record", "fields": {"patient_id": "1001"}}
    assert backend.request("POST", f"/{medic}/_bulk_docs", {"docs": [poison, good]})[0] == 201
    body = await feed(gw, medic, f"&since={since}")
    assert [r["id"] for r in body["results"]] == ["r_good"]
    status, _, _ = await gw.call("GET", f"/{medic}/r_poison", auth=auth("chw1"))
    assert status == 404

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        backend.request("PUT", f"/{medic}/r_next", {"type": "data_record", "fields": {"patient_id": "1001"}})

    writer = asyncio.create_task(write_later())
    body = await feed(gw, medic, f"&since={body['last_seq']}&feed=longpoll&timeout=20000")
    await writer
    assert [r["id"] for r in body["results"]] == ["r_next"]
