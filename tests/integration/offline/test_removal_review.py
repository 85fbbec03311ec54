"""Findings of an attacker's review of removals across replicas and past the horizon. Each
test showed its hole working against the real test backend (both backends)."""

from __future__ import annotations

import uuid
from typing import Any

from proxy.devserver.backend import Backend
from proxy.keys import INDEX, SINCE_CODEC

from offline_data import CHW1_READS, HOUSEHOLD, auth, move_house
from support import (
    Gateway,
    basic,
    delete_user,
    eventually,
    gateway_settings,
    index_level,
    put_user,
    start_gateway,
    stop_gateway,
)


async def changes(gw: Gateway, db: str, who: str, since: str = "0") -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs&since={since}", auth=who)
    assert status == 200, body
    return dict(body)


def removed(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"] if r.get("deleted")]


async def test_a_removal_rows_seq_resumes_on_another_replica_without_losing_removals(
    backend: Backend, medic: str
) -> None:
    """A removal row's seq is the device's token (here A's) with how far the removals went;
    that position was numbered by the replica that served them (B). A, which numbers its
    changes otherwise, sent none of the rest (they stayed on the device for good); now a
    position another index numbered is not honoured there: every removal is sent again."""
    b = await start_gateway(gateway_settings(backend, medic, clock_skew_seconds=0))
    a = None
    try:
        await index_level(b, backend, medic)
        for _ in range(30):  # B numbers 30 changes A never numbers one by one
            _, doc = backend.request("GET", f"/{medic}/p9")
            assert backend.request("PUT", f"/{medic}/p9", {**doc, "n": doc.get("n", 0) + 1})[0] == 201  # type: ignore[union-attr]
            await index_level(b, backend, medic)
        a = await start_gateway(gateway_settings(backend, medic, clock_skew_seconds=0))
        await index_level(a, backend, medic)
        assert b.server.app[INDEX].index.ordinal > a.server.app[INDEX].index.ordinal + 20
        first = await changes(a, medic, auth("chw1"))
        assert {r["id"] for r in first["results"]} == CHW1_READS
        move_house(backend, medic, "area2", "hc1", "district1")
        await index_level(a, backend, medic)
        await index_level(b, backend, medic)
        on_b = await changes(b, medic, auth("chw1"), first["last_seq"])
        assert set(removed(on_b)) == HOUSEHOLD, on_b
        row = on_b["results"][0]["seq"]  # PouchDB checkpoints a row's seq mid-page
        held = a.server.app[SINCE_CODEC].decode("chw1", row)
        assert held is not None and held.epoch == a.server.app[INDEX].epoch and held.removed_to is not None
        on_b_again = await changes(b, medic, auth("chw1"), row)
        assert len(removed(on_b_again)) == len(HOUSEHOLD) - 1, on_b_again  # B goes on after it
        on_a = await changes(a, medic, auth("chw1"), row)
        assert set(removed(on_a)) == HOUSEHOLD, on_a["results"]  # A sends them all again
    finally:
        if a is not None:
            await stop_gateway(a)
        await stop_gateway(b)


async def test_a_token_past_the_horizon_names_no_doc_made_after_the_user_left(
    backend: Backend, medic: str
) -> None:
    """A token older than the index's memory, of a user whose scope changed since: their
    old scope judged at the oldest moment the index remembers named docs made there after
    they had left it (never theirs to read) as removals, with their ids and, through the
    made-up revision's history, their real revisions. Such a token now gets no removals."""
    name = f"moved-{uuid.uuid4().hex[:8]}"
    who = basic(name, "pw-" + name)
    put_user(backend, {"name": name, "password": "pw-" + name, "roles": ["chw"], "facility_id": "area2"})
    try:
        gw = await start_gateway(
            gateway_settings(backend, medic, removals_horizon_days=1e-5, auth_cache_seconds=0)
        )
    except BaseException:
        delete_user(backend, name)
        raise
    sync = gw.server.app[INDEX]
    try:
        await index_level(gw, backend, medic)
        first = await changes(gw, medic, who)
        assert "p3" in {r["id"] for r in first["results"]}
        put_user(backend, {"name": name, "password": "pw-" + name, "roles": ["chw"], "facility_id": "area3"})
        secret = {"_id": "secret_p", "type": "person", "name": "secret",
                  "parent": {"_id": "house2", "parent": {"_id": "area2", "parent": {"_id": "hc1"}}}}  # fmt: skip
        assert backend.request("PUT", f"/{medic}/secret_p", secret)[0] == 201
        await index_level(gw, backend, medic)
        made_at = sync.index.ordinal
        n = 0

        async def forgotten() -> bool:
            nonlocal n
            n += 1
            assert backend.request("PUT", f"/{medic}/elsewhere{n}", {"type": "data_record"})[0] == 201
            await index_level(gw, backend, medic)
            return sync.index.history.since > made_at

        assert await eventually(forgotten, within=30, step=0.2)
        now_reads = await changes(gw, medic, who)
        assert "secret_p" not in {r["id"] for r in now_reads["results"]}  # never theirs
        body = await changes(gw, medic, who, first["last_seq"])
        assert "secret_p" not in {r["id"] for r in body["results"]}, body["results"]
    finally:
        await stop_gateway(gw)
        delete_user(backend, name)
