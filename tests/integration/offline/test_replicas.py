"""Since tokens and removals across couchgate replicas and restarts: a device's position,
handed out by one process, is honoured by another (the same database), and what left the
user's scope meanwhile is still removed. Two real gateways on one real backend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX, SINCE_CODEC

from offline_data import CHW1_READS, HOUSEHOLD, auth, move_house, person
from support import Gateway, eventually, gateway_settings, index_level, start_gateway, stop_gateway


async def changes(gw: Gateway, db: str, user: str, since: str = "0") -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs&since={since}", auth=auth(user))
    assert status == 200, body
    return dict(body)


def removed(body: dict[str, Any]) -> set[str]:
    return {r["id"] for r in body["results"] if r.get("deleted")}


@pytest.fixture
async def pair(backend: PouchServer, medic: str) -> Any:
    a = await start_gateway(gateway_settings(backend, medic, clock_skew_seconds=0))
    b = await start_gateway(gateway_settings(backend, medic, clock_skew_seconds=0))
    try:
        yield a, b
    finally:
        await stop_gateway(a)
        await stop_gateway(b)


async def test_a_token_from_one_replica_is_honoured_by_another_with_removals(
    pair: tuple[Gateway, Gateway], medic: str, backend: PouchServer
) -> None:
    a, b = pair
    await index_level(b, backend, medic)  # B's marks reach back before A's token (else: backfill)
    first = await changes(a, medic, "chw1")
    assert {r["id"] for r in first["results"]} == CHW1_READS

    noop = await changes(b, medic, "chw1", first["last_seq"])
    assert noop["results"] == []  # nothing changed: nothing sent again, no backfill

    move_house(backend, medic, "area2", "hc1", "district1")
    await index_level(b, backend, medic)
    moved = await changes(b, medic, "chw1", first["last_seq"])
    assert removed(moved) == HOUSEHOLD, moved["results"]
    assert {r["id"] for r in moved["results"]} == HOUSEHOLD

    move_house(backend, medic, "area1", "hc1", "district1")
    await index_level(a, backend, medic)
    back = await changes(a, medic, "chw1", moved["last_seq"])  # B's token, on A
    assert {r["id"] for r in back["results"] if not r.get("deleted")} == HOUSEHOLD, back["results"]


async def test_a_checkpoint_at_a_row_of_the_first_build_moves_on_and_is_honoured_elsewhere(
    pair: tuple[Gateway, Gateway], medic: str, backend: PouchServer
) -> None:
    """PouchDB checkpoints the seq of the last row it took; after an initial pull that row
    lies inside the index's first build, a position no time can place. A no-op answers a
    token that another replica can place (so its no-op is one too), not that row's."""
    a, b = pair
    await index_level(b, backend, medic)
    first = await changes(a, medic, "chw1")
    row = first["results"][-1]["seq"]
    noop = await changes(a, medic, "chw1", row)
    assert noop["results"] == [] and noop["last_seq"] != row
    on_b = await changes(b, medic, "chw1", noop["last_seq"])
    assert on_b["results"] == []  # placed: no backfill
    assert on_b["last_seq"] == noop["last_seq"]  # A's token rests on B: no checkpoint to write
    again = await changes(b, medic, "chw1", on_b["last_seq"])
    assert again["results"] == [] and again["last_seq"] == on_b["last_seq"]


async def test_a_token_from_the_future_is_a_backfill(
    pair: tuple[Gateway, Gateway], medic: str, backend: PouchServer
) -> None:
    a, b = pair
    codec = a.server.app[SINCE_CODEC]
    token = (await changes(a, medic, "chw1"))["last_seq"]
    since = codec.decode("chw1", token)
    assert since is not None
    future = codec.encode(
        "chw1", replace(since, issued=since.issued + 3_600_000, level=since.level + 3_600_000)
    )
    await index_level(b, backend, medic)
    body = await changes(b, medic, "chw1", future)
    assert {r["id"] for r in body["results"]} == CHW1_READS  # started over: everything sent again


def snapshot_file(state: Path) -> Path:
    (snap,) = state.glob("index-*.snap")
    return snap


async def restarted(backend: PouchServer, medic: str, state: Path) -> Gateway:
    # The default clock skew: too wide for the marks of a few seconds' run to place a token,
    # so only the snapshot's epochs make the tokens exact.
    gw = await start_gateway(gateway_settings(backend, medic, state_dir=state))
    await index_level(gw, backend, medic)
    return gw


async def test_a_restart_resumes_from_the_snapshot_with_tokens_and_removals(
    backend: PouchServer, medic: str, tmp_path: Path
) -> None:
    a = await restarted(backend, medic, tmp_path)
    try:
        assert not a.server.app[INDEX].restored  # nothing saved yet: built from CouchDB
        first = await changes(a, medic, "chw1")
    finally:
        await stop_gateway(a)  # saves the snapshot
    assert snapshot_file(tmp_path).is_file()

    b = await restarted(backend, medic, tmp_path)
    try:
        assert b.server.app[INDEX].restored
        again = await changes(b, medic, "chw1", first["last_seq"])
        assert again["results"] == []  # exact, no backfill
        assert again["last_seq"] == first["last_seq"]  # the device's own token: no checkpoint write
    finally:
        await stop_gateway(b)

    move_house(backend, medic, "area2", "hc1", "district1")  # while no couchgate runs
    c = await restarted(backend, medic, tmp_path)
    try:
        assert c.server.app[INDEX].restored
        moved = await changes(c, medic, "chw1", first["last_seq"])
        assert removed(moved) == HOUSEHOLD and {r["id"] for r in moved["results"]} == HOUSEHOLD, moved
    finally:
        await stop_gateway(c)


async def test_a_restart_answers_the_db_info_from_the_counts_it_saved(
    backend: PouchServer, medic: str, tmp_path: Path
) -> None:
    """PouchDB reads `GET /{db}` at the start of every sync: after a restart against an
    unchanged database, its counts come from the snapshot (saved at shutdown even when
    only they changed), not from reading the user's whole scope again."""
    a = await restarted(backend, medic, tmp_path)
    try:
        _, before, _ = await a.call("GET", f"/{medic}", auth=auth("chw1"))
    finally:
        await stop_gateway(a)
    b = await restarted(backend, medic, tmp_path)
    try:
        index = b.server.app[INDEX].index
        _, after, _ = await b.call("GET", f"/{medic}", auth=auth("chw1"))
        assert (after["doc_count"], after["doc_del_count"]) == (before["doc_count"], before["doc_del_count"])
        assert (after["doc_count"], after["doc_del_count"]) == (len(CHW1_READS), 0)
        assert not any(user.name == "chw1" for user in index._feeds)  # no feed was built for it
    finally:
        await stop_gateway(b)


async def test_a_crash_resumes_from_the_last_periodic_snapshot(
    backend: PouchServer, medic: str, tmp_path: Path
) -> None:
    """Killed without its shutdown save: the next process takes up the snapshot saved after
    the first build, catches up, and still places a token handed out after that save."""
    settings = gateway_settings(backend, medic, clock_skew_seconds=0, state_dir=tmp_path)
    a = await start_gateway(settings)
    sync = a.server.app[INDEX]
    try:
        await index_level(a, backend, medic)

        async def saved() -> bool:
            return sync.saved_at_ordinal == sync.index.ordinal

        assert await eventually(saved)  # the saver's first snapshot, after the build
        assert (
            backend.request("PUT", f"/{medic}/p_new", person("p_new", "house1", "area1", "hc1", "district1"))[
                0
            ]
            == 201
        )
        await index_level(a, backend, medic)
        later = await changes(a, medic, "chw1")  # a token past the snapshot
        assert "p_new" in {r["id"] for r in later["results"]}
        sync.snapshots = None  # the crash: no save at shutdown
    finally:
        await stop_gateway(a)

    move_house(backend, medic, "area2", "hc1", "district1")
    b = await start_gateway(settings)
    try:
        await index_level(b, backend, medic)
        assert b.server.app[INDEX].restored
        moved = await changes(b, medic, "chw1", later["last_seq"])
        assert removed(moved) == HOUSEHOLD | {"p_new"}, moved["results"]
    finally:
        await stop_gateway(b)


@pytest.mark.parametrize("damage", ["tamper", "truncate", "other-secret", "other-database", "other-settings"])
async def test_a_snapshot_that_cannot_be_vouched_for_is_not_used(
    backend: PouchServer, medic: str, tmp_path: Path, damage: str
) -> None:
    a = await restarted(backend, medic, tmp_path)
    try:
        first = await changes(a, medic, "chw1")
    finally:
        await stop_gateway(a)
    snap = snapshot_file(tmp_path)
    raw = snap.read_bytes()
    if damage == "tamper":
        snap.write_bytes(raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:])
    elif damage == "truncate":
        snap.write_bytes(raw[: len(raw) // 2])
    elif damage == "other-database":  # deleted and created again under the same name
        assert backend.request("DELETE", f"/{medic}/_local/couchgate-instance?rev=0-1")[0] == 200
    elif damage == "other-settings":  # the access rules changed while no couchgate ran
        status, doc = backend.request("GET", f"/{medic}/settings")
        assert status == 200
        doc["settings"].setdefault("permissions", {})["can_export_messages"] = ["chw"]
        assert backend.request("PUT", f"/{medic}/settings", doc)[0] == 201
    overrides: dict[str, Any] = (
        {"jwt_secret": "another-secret-" + "x" * 32} if damage == "other-secret" else {}
    )
    gw = await start_gateway(
        gateway_settings(backend, medic, clock_skew_seconds=0, state_dir=tmp_path, **overrides)
    )
    try:
        await index_level(gw, backend, medic)
        assert not gw.server.app[INDEX].restored
        if damage != "other-secret":  # (another secret refuses the token itself)
            body = await changes(gw, medic, "chw1", first["last_seq"])
            assert {r["id"] for r in body["results"]} == CHW1_READS  # the device starts over
    finally:
        await stop_gateway(gw)


async def test_a_checkpoint_past_the_horizon_still_loses_what_left_since_the_horizon(
    backend: PouchServer, medic: str
) -> None:
    """The index forgot the device's position (older than the horizon, here under a
    second): what the user could read at the oldest position it remembers and cannot read
    now is still removed; the device is not started over."""
    gw = await start_gateway(gateway_settings(backend, medic, removals_horizon_days=1e-5))
    sync = gw.server.app[INDEX]
    try:
        await index_level(gw, backend, medic)
        first = await changes(gw, medic, "chw1")
        held_at = sync.index.ordinal
        n = 0

        async def forgotten() -> bool:
            nonlocal n
            n += 1  # changes elsewhere, so the follower marks time and forgets
            assert backend.request("PUT", f"/{medic}/elsewhere{n}", {"type": "data_record"})[0] == 201
            await index_level(gw, backend, medic)
            return sync.index.history.since > held_at

        assert await eventually(forgotten, within=30, step=0.2)
        move_house(backend, medic, "area2", "hc1", "district1")
        await index_level(gw, backend, medic)
        body = await changes(gw, medic, "chw1", first["last_seq"])
        assert removed(body) == HOUSEHOLD, body["results"]
        assert {r["id"] for r in body["results"]} == HOUSEHOLD  # no start over
    finally:
        await stop_gateway(gw)
