"""The index files couchgate's own writes from the bodies it wrote (`IndexSync.wrote`),
reading their changes without bodies, and files them exactly as a build from CouchDB
does; any change it did not write, or a conflicted doc, has its page read again whole.
And the write paths vouch only for what CouchDB stores as sent. Real backend (both)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.couch.client import CouchClient, JsonResult, new_session
from proxy.devserver.backend import Backend
from proxy.keys import INDEX
from proxy.offline.sync import IndexSync

from offline_data import CHW1_LINE, auth, lineage, person, report
from support import Gateway, gateway_settings, index_level

CHW1 = auth("chw1")
SUPERVISOR = auth("supervisor")


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
    """`_bulk_docs` hands the index only a revision CouchDB made of the body it was sent;
    never a device's revision (new_edits: false: CouchDB keeps whichever body reached it
    first under that revision), a doc CouchDB refused, or one with attachments."""
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
    assert vouched == [("r-made", made[0]["rev"])], vouched
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [
        {**report("r-att2", CHW1_LINE, patient_id="p1"),
         "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGk="}}},
    ]})  # fmt: skip
    assert status == 201 and body[0]["ok"], body
    assert ("r-att2", body[0]["rev"]) in vouched and ("r-att2", body[0]["rev"]) not in sync._written


def place_under(doc_id: str, *line: str, digest: str) -> dict[str, Any]:
    """A place a device made, under `line` (nearest first), at a revision of its own."""
    body = {"_id": doc_id, "type": "clinic", "name": doc_id, "parent": lineage(*line)}
    return {**body, "_rev": f"1-{digest}", "_revisions": {"start": 1, "ids": [digest]}}


def parent_in_index(gw: Gateway, doc_id: str) -> str | None:
    node = gw.server.app[INDEX].index.contact(doc_id)
    return None if node is None else node.parent


DEEP = ("house1", "area1", "hc1", "district1")  # depth 2 below chw1's area1
SHALLOW = ("area1", "hc1", "district1")  # depth 1


async def test_one_revision_pushed_with_two_bodies_is_filed_as_couchdb_keeps_it(
    gw: Gateway, medic: str, backend: Backend
) -> None:
    """A device may name one new revision twice with two bodies (in one request, or in two
    at once: on any replica). CouchDB keeps one of them; the index files that one, so a
    person registered under the place later stands where CouchDB has it: a person at
    depth 3 stays outside chw1's depth of 2 (found by an attacker's review: the index filed
    the other body, one level up, and served the person)."""
    digest = uuid.uuid4().hex
    twice = [place_under("hx", *DEEP, digest=digest), place_under("hx", *SHALLOW, digest=digest)]
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": twice, "new_edits": False}
    )
    assert status == 201, body
    for n in range(6):
        digest = uuid.uuid4().hex
        raced = [place_under(f"hy{n}", *line, digest=digest) for line in (DEEP, SHALLOW)]
        answers = await asyncio.gather(*(
            gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [doc], "new_edits": False})
            for doc in (raced if n % 2 else raced[::-1])
        ))  # fmt: skip
        assert all(status == 201 for status, _, _ in answers), answers
    secret = {**person("pz", "hx", *DEEP), "diagnosis": "secret"}
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=SUPERVISOR, json={"docs": [secret]})
    assert status == 201 and body[0].get("ok"), body
    await index_level(gw, backend, medic)
    for doc_id in ("hx", *(f"hy{n}" for n in range(6))):
        status, stored = backend.request("GET", f"/{medic}/{doc_id}")
        assert status == 200 and parent_in_index(gw, doc_id) == stored["parent"]["_id"], doc_id  # type: ignore[index]
    status, body, _ = await gw.call("GET", f"/{medic}/pz", auth=CHW1)
    if parent_in_index(gw, "hx") == "house1":
        assert status == 404, body  # depth 3
        status, feed, _ = await gw.call("GET", f"/{medic}/_changes?style=all_docs", auth=CHW1)
        assert "pz" not in {row["id"] for row in feed["results"]}


async def test_an_id_named_twice_in_a_request_is_not_vouched_for(
    gw: Gateway, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are matched to docs by id (pouchdb-server does not keep request order): a
    revision CouchDB made is vouched for only when the request names its id once."""
    sync = gw.server.app[INDEX]
    vouched: list[str] = []
    real = sync.wrote

    def spy(written: Any) -> None:
        written = list(written)
        vouched.extend(d["_id"] for d, _ in written)
        real(written)

    monkeypatch.setattr(sync, "wrote", spy)
    docs = [report("r-twice", CHW1_LINE, patient_id="p1"), report("r-twice", CHW1_LINE, patient_id="p2"),
            report("r-once", CHW1_LINE, patient_id="p1")]  # fmt: skip
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": docs})
    assert status == 201 and sum(1 for row in body if row.get("ok")) == 2, body
    assert vouched == ["r-once"], vouched
