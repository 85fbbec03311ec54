"""Offline users' `_changes`: exactly their readable set, paging, tombstones, backfills, live."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer
from proxy.offline import changes as changes_module

from offline_data import CHW1_READS, GLOBAL, SUPERVISOR_READS, auth, lineage
from support import Gateway, assert_couch_error, gateway_settings, start_gateway, stop_gateway


async def changes(gw: Gateway, db: str, user: str, query: str = "") -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs{query}", auth=auth(user))
    assert status == 200, body
    return body


async def drain(
    gw: Gateway, db: str, user: str, since: str = "0", limit: int = 4
) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    for _ in range(200):
        body = await changes(gw, db, user, f"&since={since}&limit={limit}")
        rows += body["results"]
        assert body["last_seq"] != "" and isinstance(body["last_seq"], str)
        since = body["last_seq"]
        if len(body["results"]) < limit:
            return rows, since
    raise AssertionError("feed never ended")


@pytest.mark.parametrize(("user", "expected"), [("chw1", CHW1_READS), ("supervisor", SUPERVISOR_READS)])
async def test_feed_is_exactly_the_readable_set(
    gw: Gateway, medic: str, user: str, expected: set[str]
) -> None:
    body = await changes(gw, medic, user)
    assert {r["id"] for r in body["results"]} == expected
    again = await changes(gw, medic, user, f"&since={body['last_seq']}")
    assert again["results"] == []


async def test_limit_zero_is_no_rows_and_the_position_asked_from(gw: Gateway, medic: str) -> None:
    """As CouchDB 3 answers it (couchgate sent every row)."""
    empty = await changes(gw, medic, "chw1", "&limit=0")
    assert empty["results"] == []
    rest = await changes(gw, medic, "chw1", f"&since={empty['last_seq']}")
    assert {r["id"] for r in rest["results"]} == CHW1_READS
    again = await changes(gw, medic, "chw1", f"&since={rest['last_seq']}&limit=0")
    assert again == {"results": [], "last_seq": rest["last_seq"], "pending": 0}


async def test_paging_with_limit_loses_nothing_and_last_seq_advances(gw: Gateway, medic: str) -> None:
    rows, _ = await drain(gw, medic, "supervisor", limit=3)
    ids = [r["id"] for r in rows]
    assert set(ids) == SUPERVISOR_READS and len(ids) == len(set(ids))
    seqs = [r["seq"] for r in rows]
    assert len(set(seqs)) == len(seqs)


async def test_last_seq_rests_while_nothing_reaches_the_device(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A no-op answers the device's own token back (PouchDB then writes no checkpoint on
    either side), also when the database changed elsewhere, and also from a live feed that
    timed out; a change for the device moves it on."""
    first = await changes(gw, medic, "chw1")
    backend.request(
        "PUT",
        f"/{medic}/elsewhere",
        {"type": "person", "parent": lineage("house3", "area3", "hc2", "district2")},
    )
    second = await changes(gw, medic, "chw1", f"&since={first['last_seq']}")
    assert second["results"] == []
    assert second["last_seq"] == first["last_seq"]
    live = await changes(gw, medic, "chw1", f"&since={first['last_seq']}&feed=longpoll&timeout=200")
    assert live["results"] == [] and live["last_seq"] == first["last_seq"]
    backend.request("PUT", f"/{medic}/r_new", {"type": "data_record", "form": "visit",
                                               "contact": lineage("chw1_person", "area1", "hc1", "district1"),
                                               "fields": {"patient_uuid": "chw1_person"}})  # fmt: skip
    third = await changes(gw, medic, "chw1", f"&since={second['last_seq']}")
    assert [r["id"] for r in third["results"]] == ["r_new"] and third["last_seq"] != first["last_seq"]
    assert (await changes(gw, medic, "chw1", f"&since={third['last_seq']}"))["last_seq"] == third["last_seq"]
    assert (await changes(gw, medic, "chw2", f"&since={third['last_seq']}"))["last_seq"] != third["last_seq"]


async def test_last_seq_advances_once_the_resting_token_is_old(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old token is not answered back: what left the scope is then judged from a recent
    position, not from ever further back, and the device's first token (still on its
    first pull) is replaced too."""
    first = await changes(gw, medic, "chw1", "&since=0&limit=1")
    rows, caught_up = await drain(gw, medic, "chw1", first["last_seq"])
    assert rows and (await changes(gw, medic, "chw1", f"&since={caught_up}"))["last_seq"] == caught_up
    monkeypatch.setattr(changes_module, "RESTING_TOKEN_SECONDS", 0)
    backend.request(
        "PUT",
        f"/{medic}/elsewhere",
        {"type": "person", "parent": lineage("house3", "area3", "hc2", "district2")},
    )
    later = await changes(gw, medic, "chw1", f"&since={caught_up}")
    assert later["results"] == [] and later["last_seq"] != caught_up


async def test_include_docs_and_doc_ids_filter(gw: Gateway, medic: str) -> None:
    body = await changes(gw, medic, "chw1", '&include_docs=true&filter=_doc_ids&doc_ids=["p1","p9","nope"]')
    assert [r["id"] for r in body["results"]] == ["p1"]
    assert body["results"][0]["doc"]["patient_id"] == "1001"
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_changes?filter=_doc_ids", auth=auth("chw1"), json={"doc_ids": ["p2", "p3"]}
    )
    assert status == 200 and [r["id"] for r in body["results"]] == ["p2"]


async def test_deleted_doc_in_scope_arrives_as_tombstone(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    since = (await changes(gw, medic, "chw1"))["last_seq"]
    _, doc = backend.request("GET", f"/{medic}/p2")
    backend.request("DELETE", f"/{medic}/p2?rev={doc['_rev']}")
    body = await changes(gw, medic, "chw1", f"&since={since}&include_docs=true")
    assert [(r["id"], r.get("deleted")) for r in body["results"]] == [("p2", True)]
    assert body["results"][0]["doc"]["_deleted"] is True


async def test_contact_moved_in_brings_its_older_docs(gw: Gateway, medic: str, backend: PouchServer) -> None:
    since = (await changes(gw, medic, "chw1"))["last_seq"]
    # CHT moves a household by rewriting its lineage and its members'.
    for doc_id in ("house2", "p3"):
        _, doc = backend.request("GET", f"/{medic}/{doc_id}")
        parents = (
            ("area1", "hc1", "district1") if doc_id == "house2" else ("house2", "area1", "hc1", "district1")
        )
        doc["parent"] = lineage(*parents)
        assert backend.request("PUT", f"/{medic}/{doc_id}", doc)[0] == 201
    body = await changes(gw, medic, "chw1", f"&since={since}")
    assert {r["id"] for r in body["results"]} == {"house2", "p3", "r_p3"}


async def test_scope_change_of_the_user_backfills(gw: Gateway, medic: str, backend: PouchServer) -> None:
    since = (await changes(gw, medic, "chw2"))["last_seq"]
    _, user = backend.request("GET", "/_users/org.couchdb.user:chw2")
    user["facility_id"] = ["area2", "area1"]
    assert backend.request("PUT", "/_users/org.couchdb.user:chw2", user)[0] == 201
    try:
        await asyncio.sleep(0.6)  # the gateway's user cache lives 0.5 s in these tests
        body = await changes(gw, medic, "chw2", f"&since={since}")
        ids = {r["id"] for r in body["results"]}
        assert {"area1", "house1", "p1", "r_p1", "house2", "p3"} <= ids
    finally:
        _, user = backend.request("GET", "/_users/org.couchdb.user:chw2")
        user["facility_id"] = "area2"
        backend.request("PUT", "/_users/org.couchdb.user:chw2", user)


@pytest.mark.parametrize("since", ["garbage", "eyJ1IjoiY2h3MSJ9.forged", "12-g1AAAAFTeJzL", "99999999"])
async def test_unknown_or_forged_since_restarts_safely(gw: Gateway, medic: str, since: str) -> None:
    body = await changes(gw, medic, "chw1", f"&since={since}")
    assert {r["id"] for r in body["results"]} == CHW1_READS


async def test_another_users_token_restarts(gw: Gateway, medic: str) -> None:
    token = (await changes(gw, medic, "supervisor"))["last_seq"]
    body = await changes(gw, medic, "chw1", f"&since={token}")
    assert {r["id"] for r in body["results"]} == CHW1_READS


async def test_longpoll_wakes_on_a_change_in_scope_only(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    since = (await changes(gw, medic, "chw1"))["last_seq"]

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        backend.request(
            "PUT", f"/{medic}/out-of-scope", {"type": "person", "parent": lineage("house3", "area3")}
        )
        await asyncio.sleep(0.3)
        backend.request(
            "PUT", f"/{medic}/r_new", {"type": "data_record", "form": "v", "fields": {"patient_id": "1001"}}
        )

    writer = asyncio.create_task(write_later())
    started = time.monotonic()
    body = await changes(gw, medic, "chw1", f"&since={since}&feed=longpoll&heartbeat=200&timeout=20000")
    await writer
    assert [r["id"] for r in body["results"]] == ["r_new"]
    assert time.monotonic() - started < 10


async def test_longpoll_times_out_with_empty_results(gw: Gateway, medic: str) -> None:
    since = (await changes(gw, medic, "chw1"))["last_seq"]
    body = await changes(gw, medic, "chw1", f"&since={since}&feed=longpoll&timeout=300")
    assert body["results"] == [] and body["last_seq"]


async def test_continuous_feed_streams_rows_then_last_seq(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    url = f"{gw.url}/{medic}/_changes?feed=continuous&timeout=1500&heartbeat=300"
    import orjson

    lines = []
    async with gw.http.get(url, headers={"Authorization": auth("chw1")}) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.strip():
                lines.append(orjson.loads(line))
    ids = {line["id"] for line in lines if "id" in line}
    assert ids == CHW1_READS
    assert "last_seq" in lines[-1]


async def test_bad_feed_parameters_are_400(gw: Gateway, medic: str) -> None:
    for query in (
        "&feed=eventsource",
        "&filter=app/by_user",
        "&limit=-1",
        "&filter=_doc_ids&doc_ids=notjson",
    ):
        status, body, _ = await gw.call("GET", f"/{medic}/_changes?{query}", auth=auth("chw1"))
        assert_couch_error(status, body, 400, "bad_request")


async def test_a_restarted_couchgate_backfills_rather_than_skipping(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    token = (await changes(gw, medic, "chw1"))["last_seq"]
    backend.request("PUT", f"/{medic}/r_after", {"type": "data_record", "fields": {"patient_id": "1001"}})
    restarted = await start_gateway(gateway_settings(backend, medic))
    try:
        body = await changes(restarted, medic, "chw1", f"&since={token}")
    finally:
        await stop_gateway(restarted)
    assert {r["id"] for r in body["results"]} == CHW1_READS | {"r_after"}


async def test_a_role_with_a_bigger_depth_backfills_older_docs(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """chw2 gains a role replicating deeper: a doc below its old depth, unchanged since
    before its checkpoint, arrives on the next incremental read."""
    _, settings = backend.request("GET", f"/{medic}/settings")
    settings["settings"]["roles"]["chw_deep"] = {"offline": True}
    settings["settings"]["replication_depth"].append({"role": "chw_deep", "depth": 3})
    assert backend.request("PUT", f"/{medic}/settings", settings)[0] == 201
    deep = {"type": "person", "parent": lineage("p3", "house2", "area2", "hc1", "district1")}
    assert backend.request("PUT", f"/{medic}/deep3", deep)[0] == 201
    since = (await changes(gw, medic, "chw2"))["last_seq"]
    assert "deep3" not in {r["id"] for r in (await changes(gw, medic, "chw2"))["results"]}
    _, user = backend.request("GET", "/_users/org.couchdb.user:chw2")
    user["roles"] = ["chw", "chw_deep"]
    assert backend.request("PUT", "/_users/org.couchdb.user:chw2", user)[0] == 201
    try:
        await asyncio.sleep(0.6)  # the gateway's user cache lives 0.5 s in these tests
        body = await changes(gw, medic, "chw2", f"&since={since}")
        assert "deep3" in {r["id"] for r in body["results"]}
    finally:
        _, user = backend.request("GET", "/_users/org.couchdb.user:chw2")
        user["roles"] = ["chw"]
        backend.request("PUT", "/_users/org.couchdb.user:chw2", user)


async def test_a_malformed_depth_narrows_the_scope_and_is_logged(
    gw: Gateway, medic: str, backend: PouchServer, caplog: pytest.LogCaptureFixture
) -> None:
    _, settings = backend.request("GET", f"/{medic}/settings")
    settings["settings"]["replication_depth"] = [{"role": "chw", "depth": "2"}]  # a string: a typo
    # Logged when the index takes the settings up, which its follower may do at once.
    with caplog.at_level("WARNING", logger="couchgate.index"):
        assert backend.request("PUT", f"/{medic}/settings", settings)[0] == 201
        body = await changes(gw, medic, "chw1")
    # Read as depth 0: the facility itself and what is filed under the user, never everything.
    assert {r["id"] for r in body["results"]} == GLOBAL | {"area1", "org.couchdb.user:chw1", "task_chw1"}
    assert any("replication_depth depth='2'" in r.getMessage() for r in caplog.records)
