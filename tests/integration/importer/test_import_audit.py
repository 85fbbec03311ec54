"""Every import in the audit log: one entry per doc with its status, and one per import."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from import_support import do_import

from proxy.devserver.backend import PouchServer
from proxy.importer import pipeline

from support import (
    Gateway,
    TestUser,
    audit_entries,
    audited_gateway,
    eventually,
)


@pytest.fixture
async def agw(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    async with audited_gateway(backend, db) as gw:
        yield gw


async def import_entries(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    return await audit_entries(gw, backend, f"&action=import{query}")


async def test_each_doc_and_each_import_is_recorded(
    agw: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    first = await do_import(agw, path, alice, [{"_id": "x", "type": "person", "v": 1}, {"_id": "same", "v": 1},
                                                {"_id": "kb", "v": 1}])  # fmt: skip
    rev_x = first["results"][0]["rev"]
    payload = [{"_id": "new", "type": "data_record"}, {"_id": "x", "type": "person", "v": 2}, {"_id": "same", "v": 1},
               "not a doc"]  # fmt: skip
    await do_import(agw, path, alice, payload)  # skip
    over = await do_import(agw, path, alice, payload, "?on_conflict=overwrite")
    both = await do_import(agw, path, alice, [{"_id": "kb", "v": 2}], "?on_conflict=keep_both")
    await do_import(agw, path, alice, payload, "?dry_run=true")  # writes nothing, records nothing

    found = await import_entries(agw, backend)
    per_doc = [e for e in found if e["doc_id"] is not None or e["details"].get("status") == "invalid"]
    imports = [e for e in found if "summary" in e["details"]]
    assert len(imports) == 4 and all(e["user"] == "alice" and e["db"] == db for e in found)
    assert len(per_doc) == 3 + 4 + 4 + 1
    by = {(e["doc_id"], e["details"]["status"]): e for e in per_doc}
    assert (
        by[("new", "created")]["outcome"] == "written" and by[("new", "created")]["doc_type"] == "data_record"
    )
    assert by[("x", "skipped")]["outcome"] == "success" and by[("x", "skipped")]["rev_before"] == rev_x
    updated = by[("x", "updated")]
    assert (updated["outcome"], updated["rev_before"], updated["rev_after"]) == (
        "written", rev_x, over["results"][1]["rev"])  # fmt: skip
    assert updated["doc_type"] == "person"
    assert (
        by[("same", "unchanged")]["outcome"] == "success" and by[("same", "unchanged")]["rev_after"] is None
    )
    assert by[(None, "invalid")]["outcome"] == "invalid" and by[(None, "invalid")]["reason"]
    branch = by[("kb", "conflict")]  # a stored keep_both branch is a write
    assert (branch["outcome"], branch["rev_after"]) == ("written", both["results"][0]["rev"])
    last = max(imports, key=lambda e: e["ts"])
    assert last["details"]["summary"] == {"conflict": 1} and last["details"]["complete"] is True


async def test_a_client_that_leaves_mid_import_loses_no_audit_entry(
    agw: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client hangs up after the first rows, while the second chunk's write is on its way
    (CouchDB has it; its answer is slow): that chunk still gets its audit entries, and the
    import's own entry says it did not complete."""
    post = pipeline.Importer._post
    in_flight = asyncio.Event()

    async def slow_answer(self: pipeline.Importer, where: str, body: dict[str, Any]) -> Any:
        answer = await post(self, where, body)
        if body["docs"][0]["_id"] == "g0500":
            in_flight.set()
            await asyncio.sleep(1)
        return answer

    monkeypatch.setattr(pipeline.Importer, "_post", slow_answer)
    lines = b"".join(
        orjson.dumps({"_id": f"g{i:04d}", "pad": "x" * 200}) + b"\n" for i in range(950)
    )  # one page
    async with agw.http.post(f"{agw.url}/{db}/_couchgate/import", data=lines,
                             headers={"Authorization": users["alice"].auth, "Content-Type": "application/x-ndjson"}) as resp:  # fmt: skip
        assert resp.status == 200
        await resp.content.readline()
        await in_flight.wait()
        resp.close()  # hang up

    async def finished() -> bool:
        return any("summary" in e["details"] for e in await import_entries(agw, backend))

    assert await eventually(finished, within=20)
    _, stored = backend.request("GET", f"/{db}/_all_docs")
    written = {r["id"] for r in stored["rows"]}
    found = await import_entries(agw, backend)
    recorded = {e["doc_id"] for e in found if e["outcome"] == "written" and e["doc_id"] is not None}
    assert len(written) == 950 and recorded == written
    [summary] = [e for e in found if "summary" in e["details"]]
    assert summary["outcome"] == "error" and summary["details"]["complete"] is False
