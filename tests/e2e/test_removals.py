"""Devices forget what leaves their scope, and get it back when it returns: real PouchDB 9
devices, kept across steps, against the real test backend (tests/offline_data.py)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX

from balancer import Balancer
from e2e_support import PouchSession
from offline_data import HOUSEHOLD, PASSWORD, move_house
from support import (
    Gateway,
    audit_entries,
    audited_gateway,
    basic,
    eventually,
    gateway_settings,
    index_level,
    start_gateway,
    stop_gateway,
)

pytestmark = pytest.mark.e2e


def pw(name: str) -> str:
    return PASSWORD.format(name)


def upstream(backend: PouchServer, db: str, doc_id: str) -> dict[str, Any]:
    status, body = backend.request("GET", f"/{db}/{doc_id}")
    assert status == 200, body
    return dict(body)


def rev_trees(backend: PouchServer, db: str, ids: set[str]) -> dict[str, Any]:
    """Every leaf of each doc, with its history: what CouchDB holds of it."""
    trees = {}
    for doc_id in sorted(ids):
        status, body = backend.request("GET", f"/{db}/{doc_id}?revs=true&open_revs=all")
        assert status == 200, body
        trees[doc_id] = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return trees


def content(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


@pytest.fixture
async def audited(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    async with audited_gateway(backend, medic, auth_cache_seconds=0.5) as gw:
        yield gw


async def test_a_household_moved_away_leaves_the_device_and_comes_back(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    async with PouchSession(f"{audited.url}/{medic}") as pouch:
        first = await pouch.device("pull", "a", "chw1", pw("chw1"))
        assert first["ok"] and set(await pouch.docs("a")) >= HOUSEHOLD
        await pouch.device("live", "live", "chw1", pw("chw1"))  # a second device, listening
        assert (await pouch.call({"cmd": "until", "device": "live", "present": sorted(HOUSEHOLD)}))["done"]

        move_house(backend, medic, "area2", "hc1", "district1")  # into chw2's area
        trees = rev_trees(backend, medic, HOUSEHOLD)

        pulled = await pouch.device("pull", "a", "chw1", pw("chw1"))
        assert pulled["ok"] and pulled["errors"] == []
        held = set(await pouch.docs("a"))
        assert not held & HOUSEHOLD, held & HOUSEHOLD
        assert {"area1", "chw1_person", "task_chw1", "settings"} <= held  # the rest stays
        gone = await pouch.call({"cmd": "until", "device": "live", "absent": sorted(HOUSEHOLD)})
        assert gone["done"], gone  # the live pull took them off too
        admin = basic(backend.admin_user, backend.admin_password)
        _, scope, _ = await audited.call("GET", "/_couchgate/users/chw1/scope", auth=admin)
        assert scope["left_recently"] == len(HOUSEHOLD), scope

        pushed = await pouch.device("push", "a", "chw1", pw("chw1"))
        assert pushed["ok"] and pushed["errors"] == [] and pushed["denied"] == 0, pushed
        assert rev_trees(backend, medic, HOUSEHOLD) == trees  # nothing was written upstream

        theirs = await pouch.device("pull", "b", "chw2", pw("chw2"))
        assert theirs["ok"] and set(await pouch.docs("b")) >= HOUSEHOLD

        move_house(backend, medic, "area1", "hc1", "district1")  # back
        back = await pouch.device("pull", "a", "chw1", pw("chw1"))
        assert back["ok"] and back["errors"] == []
        docs = await pouch.docs("a")
        assert set(docs) >= HOUSEHOLD
        for doc_id in HOUSEHOLD:
            assert content(docs[doc_id]) == content(upstream(backend, medic, doc_id)), doc_id
            assert "_conflicts" not in docs[doc_id]
        assert (await pouch.call({"cmd": "until", "device": "live", "present": sorted(HOUSEHOLD)}))["done"]

        # An edit of a doc that came back lands upstream and wins.
        p1 = docs["p1"]
        await pouch.call({"cmd": "put", "device": "a", "doc": {**p1, "name": "edited on the device"}})
        pushed = await pouch.device("push", "a", "chw1", pw("chw1"))
        assert pushed["ok"] and pushed["errors"] == [] and pushed["denied"] == 0, pushed
        assert upstream(backend, medic, "p1")["name"] == "edited on the device"
        again = await pouch.device("pull", "a", "chw1", pw("chw1"))
        assert again["ok"] and (await pouch.docs("a"))["p1"]["name"] == "edited on the device"

    removals = await audit_entries(audited, backend, "&action=removal")
    assert removals and all(e["user"] == "chw1" for e in removals)
    assert any(set(e["details"]["docs"]) == HOUSEHOLD for e in removals), removals


async def test_a_facility_taken_away_and_a_depth_reduced(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    async with PouchSession(f"{audited.url}/{medic}") as pouch:
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        assert {"area1", "chw1_person", "p1"} <= set(await pouch.docs("a"))

        # The depth: chw 2 -> 1 (p1, p2 at depth 2 leave, and the reports about them).
        settings = upstream(backend, medic, "settings")
        settings["settings"]["replication_depth"] = [{"role": "chw", "depth": 1}]
        assert backend.request("PUT", f"/{medic}/settings", settings)[0] == 201
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        held = set(await pouch.docs("a"))
        assert not held & {"p1", "p2", "r_p1", "r_p2"} and {"house1", "area1", "r_house1"} <= held, held

        # The facility: area1 -> house1 (area1 and what hangs off it but house1 leave). The
        # user doc is the session's: put back afterwards.
        _, user = backend.request("GET", "/_users/org.couchdb.user:chw1")
        assert (
            backend.request("PUT", "/_users/org.couchdb.user:chw1", {**user, "facility_id": "house1"})[0]
            == 201
        )
        try:

            async def narrowed() -> bool:
                await pouch.device("pull", "a", "chw1", pw("chw1"))
                return "area1" not in await pouch.docs("a")

            assert await eventually(narrowed, within=15)
            held = set(await pouch.docs("a"))
            assert "chw1_person" not in held and "house1" in held, held
            pushed = await pouch.device("push", "a", "chw1", pw("chw1"))
            assert pushed["ok"] and pushed["errors"] == [] and pushed["denied"] == 0, pushed
        finally:
            _, changed = backend.request("GET", "/_users/org.couchdb.user:chw1")
            backend.request(
                "PUT", "/_users/org.couchdb.user:chw1", {**changed, "facility_id": user["facility_id"]}
            )


async def test_an_unpushed_edit_stays_on_the_device_and_its_push_is_denied_and_audited(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    async with PouchSession(f"{audited.url}/{medic}") as pouch:
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        p2 = (await pouch.docs("a"))["p2"]
        await pouch.call({"cmd": "put", "device": "a", "doc": {**p2, "name": "edited before the move"}})
        move_house(backend, medic, "area2", "hc1", "district1")
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        docs = await pouch.docs("a")
        assert docs["p2"]["name"] == "edited before the move"  # not silently lost: still shown
        assert "p1" not in docs
        pushed = await pouch.device("push", "a", "chw1", pw("chw1"))
        assert pushed["denied"] == 1 and pushed["doc_write_failures"] == 1, pushed
        assert upstream(backend, medic, "p2")["name"] == "p2"

    async def refused() -> bool:
        entries = await audit_entries(audited, backend, "&outcome=forbidden&doc=p2")
        return any(e["user"] == "chw1" for e in entries)

    assert await eventually(refused)


async def test_across_a_restart_and_across_replicas(backend: PouchServer, medic: str, tmp_path: Path) -> None:
    """One address for the device (a balancer); behind it couchgate restarts between two
    pulls, and another replica answers the next ones. Removals and returns reach the
    device whichever process answers (tests/integration/offline/test_replicas.py checks
    that no checkpoint is started over)."""
    settings = gateway_settings(backend, medic, clock_skew_seconds=0, state_dir=tmp_path)
    a = await start_gateway(settings)
    b = await start_gateway(settings.model_copy(update={"state_dir": None}))  # a replica with no state
    balancer = await Balancer().start(a.url)
    try:
        await index_level(a, backend, medic)
        await index_level(b, backend, medic)
        async with PouchSession(f"{balancer.url}/{medic}") as pouch:
            first = await pouch.device("pull", "a", "chw1", pw("chw1"))
            assert first["ok"] and set(await pouch.docs("a")) >= HOUSEHOLD

            await stop_gateway(a)  # saves the index
            move_house(backend, medic, "area2", "hc1", "district1")
            a = await start_gateway(settings)
            balancer.switch(a.url)
            pulled = await pouch.device("pull", "a", "chw1", pw("chw1"))
            assert pulled["ok"] and pulled["errors"] == [], pulled
            assert a.server.app[INDEX].restored
            assert not set(await pouch.docs("a")) & HOUSEHOLD

            balancer.switch(b.url)
            move_house(backend, medic, "area1", "hc1", "district1")
            await index_level(b, backend, medic)
            back = await pouch.device("pull", "a", "chw1", pw("chw1"))
            assert back["ok"] and back["errors"] == [], back
            docs = await pouch.docs("a")
            for doc_id in HOUSEHOLD:
                assert content(docs[doc_id]) == content(upstream(backend, medic, doc_id)), doc_id

            balancer.switch(a.url)
            move_house(backend, medic, "area2", "hc1", "district1")
            await index_level(a, backend, medic)
            trees = rev_trees(backend, medic, HOUSEHOLD)
            again = await pouch.device("pull", "a", "chw1", pw("chw1"))
            assert again["ok"] and not set(await pouch.docs("a")) & HOUSEHOLD, again
            pushed = await pouch.device("push", "a", "chw1", pw("chw1"))
            assert pushed["ok"] and pushed["errors"] == [] and pushed["denied"] == 0, pushed
            assert rev_trees(backend, medic, HOUSEHOLD) == trees
    finally:
        await balancer.close()
        await stop_gateway(a)
        await stop_gateway(b)


async def test_a_doc_with_attachments_comes_back_whole(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    """A report with a photo leaves with its household and returns unchanged upstream (a
    made-up return over the same leaf): the device shows it with its attachment's bytes."""
    photo = bytes(range(256)) * 40
    report = upstream(backend, medic, "r_p1")
    report["_attachments"] = {
        "photo.jpg": {"content_type": "image/jpeg", "data": base64.b64encode(photo).decode()}
    }
    assert backend.request("PUT", f"/{medic}/r_p1", report)[0] == 201
    async with PouchSession(f"{audited.url}/{medic}") as pouch:
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        held = await pouch.docs("a", attachments=True)
        assert base64.b64decode(held["r_p1"]["_attachments"]["photo.jpg"]["data"]) == photo

        move_house(backend, medic, "area2", "hc1", "district1")
        assert (await pouch.device("pull", "a", "chw1", pw("chw1")))["ok"]
        assert "r_p1" not in await pouch.docs("a")
        move_house(backend, medic, "area1", "hc1", "district1")
        back = await pouch.device("pull", "a", "chw1", pw("chw1"))
        assert back.get("ok") and back["errors"] == [], back
        held = await pouch.docs("a", attachments=True)
        assert base64.b64decode(held["r_p1"]["_attachments"]["photo.jpg"]["data"]) == photo
        assert content(held["r_p1"]) == content(upstream(backend, medic, "r_p1"))
