"""The index files couchgate's own writes from the bodies it wrote (`IndexSync.wrote`),
reading their changes without bodies, and files them exactly as a build from CouchDB
does; any change it did not write, or a conflicted doc, has its page read again whole.
And the write paths vouch only for what CouchDB stores as sent. Real backend (both)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.couch.client import CouchClient, JsonResult, new_session
from proxy.devserver.backend import Backend
from proxy.keys import INDEX
from proxy.offline.sync import IndexSync

from offline_data import CHW1_LINE, auth, person, report
from support import Gateway, gateway_settings

CHW1 = auth("chw1")


@pytest.fixture
async def couch(backend: Backend, medic: str) -> AsyncIterator[CouchClient]:
    """A client of its own: the rounds of an index made here are the only calls it makes."""
    settings = gateway_settings(backend, medic)
    session = new_session(settings)
    try:
        yield CouchClient(session, settings)
    finally:
        await session.close()


def rounds_read(couch: CouchClient, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The params of each `_changes` read made from now on."""
    seen: list[dict[str, str]] = []
    real = couch.json

    async def spy(method: str, path: str, **kwargs: Any) -> JsonResult:
        if path.endswith("/_changes"):
            seen.append(dict(kwargs.get("params") or {}))
        return await real(method, path, **kwargs)

    monkeypatch.setattr(couch, "json", spy)
    return seen


def filed(sync: IndexSync, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    entries = sync.index.entries
    return {
        i: (e.rev, e.deleted, tuple(e.leaves), e.kind, e.keys, e.facts, e.person)
        for i in ids
        if (e := entries.get(i)) is not None
    }


def device_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A doc as a device pushes it (new_edits: false): a revision of its own making."""
    digest = uuid.uuid4().hex
    return {**doc, "_rev": f"1-{digest}", "_revisions": {"start": 1, "ids": [digest]}}


def push(backend: Backend, db: str, docs: list[dict[str, Any]]) -> None:
    status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": docs, "new_edits": False})
    assert status == 201 and body == [], body


async def test_own_writes_are_filed_from_their_bodies_as_a_build_files_them(
    couch: CouchClient, backend: Backend, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = IndexSync(couch, medic)
    await sync.sync()
    reports = [device_doc(report(f"r-own-{n}", CHW1_LINE, patient_id="p1")) for n in range(5)]
    person_doc = device_doc(person("p-own", "house1", "area1", "hc1", "district1", shortcode="4004"))
    push(backend, medic, [*reports, person_doc])
    status, edited = backend.request(
        "PUT", f"/{medic}/p2", {**backend.request("GET", f"/{medic}/p2")[1], "x": 1}
    )
    assert status == 201, edited
    _, p2 = backend.request("GET", f"/{medic}/p2")
    gone = reports[0]
    status, deleted = backend.request("DELETE", f"/{medic}/{gone['_id']}?rev={gone['_rev']}")
    assert status in (200, 201), deleted
    sync.wrote([(d, d["_rev"]) for d in [*reports, person_doc]])
    sync.wrote([(p2, p2["_rev"]), ({"_id": gone["_id"], "_deleted": True}, deleted["rev"])])
    reads = rounds_read(couch, monkeypatch)
    await sync.sync()
    assert reads and all("include_docs" not in params for params in reads), reads
    assert sync.pages_read_again == 0
    ids = [d["_id"] for d in [*reports, person_doc]] + ["p2"]
    built = IndexSync(couch, medic)
    await built.sync()
    assert filed(sync, ids) == filed(built, ids)
    assert len(filed(sync, ids)) == len(ids)
    assert filed(sync, [gone["_id"]])[gone["_id"]][1] is True  # the deletion, filed as one
    # Each kept body is let go once filed; the deleted report's first body never was (its
    # change was overtaken by the deletion): it waits to be pushed out by newer ones.
    assert list(sync._written) == [(gone["_id"], gone["_rev"])]


async def test_a_page_holding_a_change_couchgate_did_not_write_is_read_again_whole(
    couch: CouchClient, backend: Backend, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body couchgate did not keep (another writer's), a conflicted doc, or a revision other
    than the one kept: the page is read again with CouchDB's bodies, never filed from a guess."""
    sync = IndexSync(couch, medic)
    await sync.sync()
    cases: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    ours = device_doc(report("r-ours", CHW1_LINE, patient_id="p1"))
    theirs = device_doc(report("r-theirs", CHW1_LINE, patient_id="p3"))
    cases.append(([ours, theirs], [ours]))  # another writer's doc beside ours
    split = device_doc(report("r-split", CHW1_LINE, patient_id="p1"))
    other = {**device_doc(report("r-split", CHW1_LINE, patient_id="p3"))}
    cases.append(([split, other], [split, other]))  # a conflict: two leaves, even if both were kept
    claimed = device_doc(report("r-claimed", CHW1_LINE, patient_id="p1"))
    stored = {**claimed, "fields": {"patient_id": "p3"}, "_rev": "1-" + uuid.uuid4().hex}
    stored["_revisions"] = {"start": 1, "ids": [stored["_rev"][2:]]}
    cases.append(([stored], [claimed]))  # kept under another revision than the one stored
    for round_number, (written, kept) in enumerate(cases, start=1):
        push(backend, medic, written)
        sync.wrote([(d, d["_rev"]) for d in kept])
        reads = rounds_read(couch, monkeypatch)
        await sync.sync()
        assert sync.pages_read_again == round_number
        assert [params.get("include_docs") for params in reads] == [None, "true"], reads
        monkeypatch.undo()
        ids = sorted({d["_id"] for d in written})
        built = IndexSync(couch, medic)
        await built.sync()
        assert filed(sync, ids) == filed(built, ids)


async def test_writes_vouch_for_what_couchdb_stores_as_sent(
    gw: Gateway, medic: str, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_bulk_docs` hands the index a new doc a device made (new_edits: false), or a
    revision CouchDB made; never a device's revision of a doc that already existed (another
    body may stand under it), a doc CouchDB refused, or one with attachments."""
    sync = gw.server.app[INDEX]
    vouched: list[tuple[str, str]] = []
    real = sync.wrote

    def spy(written: Any) -> None:
        written = list(written)
        vouched.extend((d["_id"], rev) for d, rev in written)
        real(written)

    monkeypatch.setattr(sync, "wrote", spy)
    new = device_doc(report("r-new", CHW1_LINE, patient_id="p1"))
    _, p1 = backend.request("GET", f"/{medic}/p1")
    digest = uuid.uuid4().hex
    gen = int(p1["_rev"].split("-")[0]) + 1
    edit = {**p1, "name": "edited", "_rev": f"{gen}-{digest}",
            "_revisions": {"start": gen, "ids": [digest, p1["_rev"].split("-")[1]]}}  # fmt: skip
    with_att = {**device_doc(report("r-att", CHW1_LINE, patient_id="p1")),
                "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGk="}}}  # fmt: skip
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [new, edit, with_att], "new_edits": False}
    )
    assert status == 201, body
    status, made, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [
        report("r-made", CHW1_LINE, patient_id="p1"),
        {**report("r-stale", CHW1_LINE, patient_id="p1"), "_rev": "1-" + "0" * 32},  # CouchDB: conflict
    ]})  # fmt: skip
    assert status == 201 and made[0]["ok"] and "error" in made[1], made
    assert sorted(vouched) == sorted([("r-new", new["_rev"]), ("r-att", with_att["_rev"]),
                                      ("r-made", made[0]["rev"])]), vouched  # fmt: skip
    assert ("r-att", with_att["_rev"]) not in sync._written  # kept only without attachments
