"""Real PouchDB clients replicate as offline users through couchgate (docs/design.md 2-4)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.devserver.backend import PouchServer

from e2e_support import NODE_DIR, SCRIPT, run_pouch
from offline_data import CHW1_READS, PASSWORD, SUPERVISOR_READS, lineage, person, place, report
from support import Gateway

pytestmark = pytest.mark.e2e


def creds(name: str) -> dict[str, list[str]]:
    return {"basic": [name, PASSWORD.format(name)]}


@pytest.mark.parametrize(("user", "expected"), [("chw1", CHW1_READS), ("supervisor", SUPERVISOR_READS)])
async def test_pull_gets_exactly_the_readable_set(
    gw: Gateway, medic: str, user: str, expected: set[str]
) -> None:
    result = await run_pouch({"op": "pull_push", "url": f"{gw.url}/{medic}", "auth": creds(user)})
    assert result["pull"]["ok"] is True
    assert set(result["ids"]) == expected


async def test_push_new_household_people_reports_and_a_forbidden_doc(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    chw_docs = [
        place("house_new", "clinic", "area1", "hc1", "district1"),
        person("p_new", "house_new", "area1", "hc1", "district1"),
        report("r_new", ("chw1_person", "area1", "hc1", "district1"), patient_uuid="p_new"),
        report("r_forbidden", ("chw1_person", "area1"), patient_uuid="p9"),
    ]
    result = await run_pouch(
        {"op": "pull_push", "url": f"{gw.url}/{medic}", "auth": creds("chw1"), "push": chw_docs}
    )
    pushed = result["pushed"]
    assert pushed["docs_written"] == 3 and pushed["doc_write_failures"] == 1, pushed
    assert [(e["id"], e["name"]) for e in pushed["errors"]] == [("r_forbidden", "forbidden")]
    for doc_id in ("house_new", "p_new", "r_new"):
        assert backend.request("GET", f"/{medic}/{doc_id}")[0] == 200
    assert backend.request("GET", f"/{medic}/r_forbidden")[0] == 404

    sup_docs = [
        place("house_sup", "clinic", "area2", "hc1", "district1"),
        person("p_sup", "house_sup", "area2", "hc1", "district1"),
        report("r_sup", ("p_sup", "house_sup", "area2"), patient_uuid="p_sup"),
        place("house_elsewhere", "clinic", "area3", "hc2", "district2"),
    ]
    result = await run_pouch(
        {"op": "pull_push", "url": f"{gw.url}/{medic}", "auth": creds("supervisor"), "push": sup_docs}
    )
    pushed = result["pushed"]
    assert pushed["docs_written"] == 3 and [e["id"] for e in pushed["errors"]] == ["house_elsewhere"]
    # The supervisor's new docs reach the supervisor's other devices; chw1's reach chw1.
    again = await run_pouch({"op": "pull_push", "url": f"{gw.url}/{medic}", "auth": creds("supervisor")})
    assert {"house_sup", "p_sup", "r_sup", "house_new", "p_new", "r_new"} <= set(again["ids"])


class LiveClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: set[str] = set()
        self.deleted: set[str] = set()

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert raw, "the live PouchDB client exited"
        return dict(orjson.loads(raw))

    async def wait_for(self, ids: set[str] = frozenset(), deleted: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        while not (ids <= self.seen and deleted <= self.deleted):
            event = await self.line()
            assert "error" not in event, event
            self.seen |= set(event.get("ids", []))
            self.deleted |= set(event.get("deleted", []))


@pytest.fixture
async def live_chw(gw: Gateway, medic: str) -> AsyncIterator[LiveClient]:
    cmd = {"op": "live", "url": f"{gw.url}/{medic}", "auth": creds("chw1")}
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), orjson.dumps(cmd).decode(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
    )  # fmt: skip
    client = LiveClient(proc)
    try:
        first = await client.line()
        assert first["ready"] is True and set(first["ids"]) == CHW1_READS
        yield client
    finally:
        proc.kill()
        await proc.wait()


def put(backend: PouchServer, db: str, doc: dict[str, Any]) -> None:
    status, current = backend.request("GET", f"/{db}/{doc['_id']}")
    if status == 200:
        doc = {**doc, "_rev": current["_rev"]}
    status, body = backend.request("PUT", f"/{db}/{doc['_id']}", doc)
    assert status == 201, body


async def test_live_replication_follows_moves_depth_and_deletes(
    live_chw: LiveClient, medic: str, backend: PouchServer
) -> None:
    # A household moves into chw1's area: it, its member and the old report about him arrive.
    put(backend, medic, place("house2", "clinic", "area1", "hc1", "district1"))
    put(backend, medic, person("p3", "house2", "area1", "hc1", "district1", shortcode="3003"))
    await live_chw.wait_for({"house2", "p3", "r_p3"})
    # A doc deeper than chw1's depth (2) is invisible until the depth is raised: then the
    # feed backfills and it arrives without having changed.
    put(backend, medic, person("deep", "p1", "house1", "area1", "hc1", "district1"))
    _, settings = backend.request("GET", f"/{medic}/settings")
    settings["settings"]["replication_depth"] = [{"role": "chw", "depth": 3}]
    put(backend, medic, settings)
    await live_chw.wait_for({"settings", "deep"})
    # A person in scope is deleted: the tombstone arrives.
    _, p2 = backend.request("GET", f"/{medic}/p2")
    backend.request("DELETE", f"/{medic}/p2?rev={p2['_rev']}")
    await live_chw.wait_for(deleted={"p2"})
    # Nothing outside the scope ever arrives: foreign docs written before a marker in
    # scope would have arrived before it (the feed keeps the order of changes).
    put(backend, medic, person("p_foreign", "house3", "area3", "hc2", "district2"))
    put(backend, medic, report("r_foreign_live", ("p9", "house3"), patient_uuid="p9"))
    put(backend, medic, {"_id": "_design/live", "views": {}})
    put(backend, medic, report("r_marker", ("chw1_person", "area1"), patient_id="1001"))
    await live_chw.wait_for({"r_marker"})
    allowed = CHW1_READS | {"house2", "p3", "r_p3", "deep", "r_marker"}
    assert live_chw.seen <= allowed, live_chw.seen - allowed
    assert live_chw.deleted == {"p2"}


def test_lineage_helper_is_nearest_first() -> None:
    assert lineage("a", "b") == {"_id": "a", "parent": {"_id": "b"}}
