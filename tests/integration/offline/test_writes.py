"""Offline users' writes: attachments in and out of scope, no existence oracle in the
answers, `_local` docs of others, the contacts written just before, and the audit entries
of every outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.couch.client import CouchClient, JsonResult
from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX

from offline_data import auth, person, place, report
from support import (
    Gateway,
    assert_couch_error,
    audit_entries,
    audited_gateway,
    eventually,
)

TEXT = {"Content-Type": "text/plain"}


async def test_writes_see_the_contacts_couchdb_has_when_they_arrive(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """Each doc write syncs the index (while it reads the stored docs): a household written
    to CouchDB a moment before is in the user's scope for it, with no follower to tell."""
    status, _, _ = await gw.call("GET", f"/{medic}", auth=auth("chw1"))
    assert status == 200  # the index is built
    follower = next(t for t in asyncio.all_tasks() if t.get_name() == "index-follower")
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    household = [place("house7", "clinic", "area1", "hc1", "district1"),
                 person("p77", "house7", "area1", "hc1", "district1")]  # fmt: skip
    assert all(
        "error" not in r for r in backend.request("POST", f"/{medic}/_bulk_docs", {"docs": household})[1]
    )
    about = {"patient_uuid": "p77"}
    status, body, _ = await gw.call("PUT", f"/{medic}/r_p77a", auth=auth("chw1"),
                                    json=report("r_p77a", ("chw1_person", "area1"), **about))  # fmt: skip
    assert status == 201, body
    status, body, _ = await gw.call("POST", f"/{medic}", auth=auth("chw1"),
                                    json=report("r_p77b", ("chw1_person", "area1"), **about))  # fmt: skip
    assert status == 201, body
    status, rows, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [
        report("r_p77c", ("chw1_person", "area1"), **about)]})  # fmt: skip
    assert status == 201 and rows[0].get("ok") is True, rows


def rev_of(backend: PouchServer, db: str, doc_id: str) -> str:
    return str(backend.request("GET", f"/{db}/{doc_id}")[1]["_rev"])


async def test_attachments_put_and_delete_in_scope(gw: Gateway, medic: str, backend: PouchServer) -> None:
    rev = rev_of(backend, medic, "p1")
    status, body, _ = await gw.call("PUT", f"/{medic}/p1/note.txt?rev={rev}", auth=auth("chw1"), data=b"hello",
                                    headers=TEXT)  # fmt: skip
    assert status == 201 and body["ok"] is True, body
    async with gw.http.get(f"{gw.url}/{medic}/p1/note.txt", headers={"Authorization": auth("chw1")}) as resp:
        assert resp.status == 200 and await resp.read() == b"hello"
    status, body, _ = await gw.call("DELETE", f"/{medic}/p1/note.txt?rev={body['rev']}", auth=auth("chw1"))
    assert status == 200 and body["ok"] is True, body
    assert "_attachments" not in backend.request("GET", f"/{medic}/p1")[1]


async def test_no_answer_tells_a_foreign_doc_from_a_missing_one(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """Every write about a doc outside the scope gets the answer the same write gets for a
    missing doc: `forbidden` when the new version is outside too, or for a delete; CouchDB's
    own `conflict` (a made-up `_rev` on a missing doc) when the new version is in scope."""
    foreign_rev = rev_of(backend, medic, "r_p9")
    foreign_body = report("x", ("p9", "house3"), patient_uuid="p9")
    mine_body = report("x", ("chw1_person", "area1"), patient_id="1001")
    pairs: list[tuple[tuple[str, str, Any, bytes | None], tuple[str, str, Any, bytes | None]]] = [
        (("PUT", f"/{medic}/r_p9", {**foreign_body, "_rev": foreign_rev}, None),
         ("PUT", f"/{medic}/r_nothing", foreign_body, None)),
        (("PUT", f"/{medic}/r_p9", {**mine_body, "_rev": foreign_rev}, None),
         ("PUT", f"/{medic}/r_nothing", {**mine_body, "_rev": "1-abc"}, None)),
        (("DELETE", f"/{medic}/r_p9?rev={foreign_rev}", None, None),
         ("DELETE", f"/{medic}/r_nothing?rev=1-abc", None, None)),
        (("PUT", f"/{medic}/r_p9/a.txt?rev={foreign_rev}", None, b"x"),
         ("PUT", f"/{medic}/r_nothing/a.txt?rev=1-abc", None, b"x")),
        (("DELETE", f"/{medic}/r_p9/a.txt?rev={foreign_rev}", None, None),
         ("DELETE", f"/{medic}/r_nothing/a.txt?rev=1-abc", None, None)),
    ]  # fmt: skip
    for pair in pairs:
        answers = []
        for method, path, json, data in pair:
            status, body, _ = await gw.call(method, path, auth=auth("chw1"), json=json, data=data,
                                            headers=TEXT if data else None)  # fmt: skip
            assert status in (403, 409), (path, status, body)
            answers.append((status, body))
        assert answers[0] == answers[1], (pair, answers)
    status, rows, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [
        {**foreign_body, "_id": "r_p9", "_rev": foreign_rev}, {**foreign_body, "_id": "r_nothing"},
        {**mine_body, "_id": "r_p9", "_rev": foreign_rev}, {**mine_body, "_id": "r_nothing", "_rev": "1-abc"},
        {"_id": "r_p9", "_rev": foreign_rev, "_deleted": True},
        {"_id": "r_nothing", "_rev": "1-abc", "_deleted": True}]})  # fmt: skip
    assert status == 201
    answered = [(r["error"], r["reason"]) for r in rows]
    assert answered[0] == answered[1] and answered[2] == answered[3] and answered[4] == answered[5], rows
    assert backend.request("GET", f"/{medic}/r_p9")[1]["_rev"] == foreign_rev
    assert backend.request("GET", f"/{medic}/r_nothing")[0] == 404


async def test_local_docs_of_another_user_cannot_be_deleted(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call("PUT", f"/{medic}/_local/cp", auth=auth("chw1"), json={"last_seq": "a"})
    assert status == 201
    rev = body["rev"]
    status, body, _ = await gw.call("DELETE", f"/{medic}/_local/cp?rev={rev}", auth=auth("chw2"))
    assert (status, body["error"]) == (404, "not_found")
    status, body, _ = await gw.call("GET", f"/{medic}/_local/cp", auth=auth("chw1"))
    assert status == 200 and body["last_seq"] == "a"
    status, body, _ = await gw.call("DELETE", f"/{medic}/_local/cp?rev={rev}", auth=auth("chw1"))
    assert status == 200 and body["ok"] is True


# -- the audit log of offline writes -------------------------------------------------------


@pytest.fixture
async def audited(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    async with audited_gateway(backend, medic) as gw:
        yield gw


async def test_a_doc_couchdb_would_refuse_gets_its_own_row_and_every_doc_is_recorded(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    docs = [
        report("r_ok", ("chw1_person", "area1"), patient_id="1001"),
        {**report("r_bogus", ("chw1_person", "area1"), patient_id="1001"), "_bogus": 1},
        report("r_no", ("p9", "house3"), patient_uuid="p9"),
    ]
    status, body, _ = await audited.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": docs}
    )
    assert status == 201, body
    assert [r["id"] for r in body] == ["r_ok", "r_bogus", "r_no"]  # request order
    assert body[1] == {
        "id": "r_bogus",
        "error": "doc_validation",
        "reason": "Bad special document member: _bogus",
    }
    assert body[2]["error"] == "forbidden" and "ok" in body[0]
    by_doc = {e["doc_id"]: e for e in await audit_entries(audited, backend, "&user=chw1")}
    assert set(by_doc) == {"r_ok", "r_bogus", "r_no"}
    assert by_doc["r_no"]["outcome"] == "forbidden" and by_doc["r_no"]["reason"]
    assert by_doc["r_ok"]["outcome"] == "written"
    assert by_doc["r_bogus"]["outcome"] == "invalid" and "_bogus" in by_doc["r_bogus"]["reason"]
    assert backend.request("GET", f"/{medic}/r_bogus")[0] == 404


REFUSE_FLAGGED = {
    "_id": "_design/refuse-flagged",
    "validate_doc_update": "function (doc) { if (doc.flagged) { throw({forbidden: 'flagged: refused'}); } }",
}


async def test_a_doc_couchdbs_own_validation_forbids_is_audited_as_forbidden(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    """A doc the rules allow but CouchDB's `validate_doc_update` refuses (`forbidden`) is
    recorded `forbidden`, as the same row is for an online user's write (one outcome
    table), not `invalid`."""
    assert backend.request("PUT", f"/{medic}/_design/refuse-flagged", REFUSE_FLAGGED)[0] == 201
    flagged = {**report("r_flagged", ("chw1_person", "area1"), patient_id="1001"), "flagged": True}
    status, body, _ = await audited.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [flagged]}
    )
    assert status == 201 and body[0]["error"] == "forbidden", body
    entries = await audit_entries(audited, backend, "&doc=r_flagged")
    assert [(e["action"], e["outcome"], e["reason"]) for e in entries] == [
        ("create", "forbidden", "flagged: refused")
    ]


async def test_a_new_doc_is_recorded_as_created_when_the_index_files_it_before_the_answer(
    audited: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index follower may file a write before couchgate has read CouchDB's answer to
    it (both come from CouchDB at about the same time): the entry still names what the
    write was when it was judged, a create, not an update of the doc it made itself."""
    sync = audited.server.app[INDEX]
    real = CouchClient.json

    async def filed_first(self: CouchClient, method: str, where: str, **kw: Any) -> JsonResult:
        answer = await real(self, method, where, **kw)
        if method == "POST" and where.endswith(f"/{medic}/_bulk_docs"):
            await sync.sync()  # the follower's round, won the race
            assert all(d["_id"] in sync.index.entries for d in kw["body"]["docs"])
        return answer

    monkeypatch.setattr(CouchClient, "json", filed_first)
    docs = [report(f"r_raced{i}", ("chw1_person", "area1"), patient_id="1001") for i in range(2)]
    status, body, _ = await audited.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": docs}
    )
    assert status == 201 and all("ok" in row for row in body), body
    status, body, _ = await audited.call("PUT", f"/{medic}/r_raced2", auth=auth("chw1"), json=docs[0])
    assert status == 201, body
    monkeypatch.undo()
    entries = await audit_entries(audited, backend, "&user=chw1&outcome=written")
    assert sorted((e["doc_id"], e["action"]) for e in entries) == [
        ("r_raced0", "create"),
        ("r_raced1", "create"),
        ("r_raced2", "create"),
    ]


BLOCK = {"_id": "_design/block", "validate_doc_update": "function () { throw({forbidden: 'closed'}); }"}


async def test_nothing_is_written_before_its_intent_is_stored(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    """The intent is stored while the stored docs are read and the index brought level, but
    the write waits for it: while no intent can be stored, an offline write is 503 and
    nothing reaches CouchDB; a request whose docs are all refused does not wait for it."""
    mine = report("r_intent", ("chw1_person", "area1"), patient_id="1001")
    p1 = backend.request("GET", f"/{medic}/p1")[1]
    edited = {**p1, "name": "edited"}  # type: ignore[dict-item]
    first = report("r_first", ("chw1_person", "area1"), patient_id="1001")
    assert (await audited.call("PUT", f"/{medic}/r_first", auth=auth("chw1"), json=first))[0] == 201
    assert backend.request("PUT", f"/{audited.settings.audit_db}/_design/block", BLOCK)[0] == 201
    for docs in ([mine], [edited], [mine, edited]):
        status, body, _ = await audited.call(
            "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": docs}
        )
        assert_couch_error(status, body, 503, "service_unavailable")
    status, body, _ = await audited.call("PUT", f"/{medic}/p1", auth=auth("chw1"), json=edited)
    assert_couch_error(status, body, 503, "service_unavailable")
    assert backend.request("GET", f"/{medic}/r_intent")[0] == 404
    assert backend.request("GET", f"/{medic}/p1")[1]["_rev"] == p1["_rev"]  # type: ignore[index]
    foreign = report("r_no", ("p9", "house3"), patient_uuid="p9")
    status, body, _ = await audited.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [foreign]}
    )
    assert status == 201 and body[0]["error"] == "forbidden", body
    _, block = backend.request("GET", f"/{audited.settings.audit_db}/_design/block")
    backend.request("DELETE", f"/{audited.settings.audit_db}/_design/block?rev={block['_rev']}")  # type: ignore[index]

    async def written() -> bool:
        status, body, _ = await audited.call(
            "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [mine]}
        )
        return status == 201 and "ok" in body[0]

    assert await eventually(written)
    intents = await audit_entries(audited, backend, "&action=intent&doc=r_intent")
    assert intents and all(e["user"] == "chw1" for e in intents)


def pushed(doc: dict[str, Any], rev_hash: str) -> dict[str, Any]:
    """`doc` as a replication push sends it: its first revision, with its history."""
    return {**doc, "_rev": f"1-{rev_hash}", "_revisions": {"start": 1, "ids": [rev_hash]}}


async def test_a_push_uses_the_intent_its_revs_diff_announced(backend: PouchServer, medic: str) -> None:
    """A replication push's `_revs_diff` stores the intent naming what it reports missing
    (while the device reads those docs); the `_bulk_docs` that sends exactly them waits for
    that intent instead of storing its own, and writes nothing while it cannot be stored.
    Revisions another user announced, or that were not announced, get an intent of their own."""
    async with audited_gateway(backend, medic, audit_flush_interval=3600) as gw:
        mine = pushed(report("r_ahead", ("chw1_person", "area1"), patient_id="1001"), "a1")
        status, diff, _ = await gw.call(
            "POST", f"/{medic}/_revs_diff", auth=auth("chw1"), json={"r_ahead": [mine["_rev"]]}
        )
        assert status == 200 and diff == {"r_ahead": {"missing": [mine["_rev"]]}}, diff
        status, rows, _ = await gw.call(
            "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [mine], "new_edits": False}
        )
        assert status == 201 and rows == [], rows
        assert backend.request("GET", f"/{medic}/r_ahead")[1]["_rev"] == mine["_rev"]  # type: ignore[index]
        [intent] = await audit_entries(gw, backend, "&action=intent&doc=r_ahead")
        assert intent["user"] == "chw1" and intent["details"]["ahead"] is True  # type: ignore[index]
        assert intent["details"]["writes"] == [["r_ahead", mine["_rev"], None]]  # type: ignore[index]
        # chw1 announced this revision, chw2 pushes it: chw2's write stores an intent of its own.
        theirs = pushed(report("r_theirs", ("p3", "house2", "area2"), patient_id="3003"), "b2")
        await gw.call("POST", f"/{medic}/_revs_diff", auth=auth("chw1"), json={"r_theirs": [theirs["_rev"]]})
        status, rows, _ = await gw.call(
            "POST", f"/{medic}/_bulk_docs", auth=auth("chw2"), json={"docs": [theirs], "new_edits": False}
        )
        assert status == 201 and rows == [], rows
        intents = await audit_entries(gw, backend, "&action=intent&doc=r_theirs")
        assert sorted(i["user"] for i in intents) == ["chw1", "chw2"], intents
        # Announced, then the audit database refuses writes before the push: nothing is written.
        blocked = pushed(report("r_blocked", ("chw1_person", "area1"), patient_id="1001"), "c3")
        assert backend.request("PUT", f"/{gw.settings.audit_db}/_design/block", BLOCK)[0] == 201
        await gw.call(
            "POST", f"/{medic}/_revs_diff", auth=auth("chw1"), json={"r_blocked": [blocked["_rev"]]}
        )
        status, body, _ = await gw.call(
            "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [blocked], "new_edits": False}
        )
        assert_couch_error(status, body, 503, "service_unavailable")
        assert backend.request("GET", f"/{medic}/r_blocked")[0] == 404


async def test_attachment_writes_record_the_new_rev(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    before = rev_of(backend, medic, "p1")
    status, put, _ = await audited.call("PUT", f"/{medic}/p1/a.txt?rev={before}", auth=auth("chw1"), data=b"x",
                                        headers=TEXT)  # fmt: skip
    assert status == 201
    status, deleted, _ = await audited.call(
        "DELETE", f"/{medic}/p1/a.txt?rev={put['rev']}", auth=auth("chw1")
    )
    assert status == 200
    await audited.call("PUT", f"/{medic}/p9/a.txt?rev=1-abc", auth=auth("chw1"), data=b"x", headers=TEXT)
    entries = await audit_entries(audited, backend, "&action=attachment")
    got = sorted((e["doc_id"], e["outcome"], e["rev_before"], e["rev_after"]) for e in entries)
    assert got == sorted([("p1", "written", before, put["rev"]), ("p1", "written", put["rev"], deleted["rev"]),
                          ("p9", "forbidden", rev_of(backend, medic, "p9"), None)])  # fmt: skip


async def test_refused_single_writes_answer_as_before_and_are_recorded_once(
    audited: Gateway, medic: str, backend: PouchServer
) -> None:
    """The answers to single-doc writes refused here (the error tree's, rendered by its
    middleware): CouchDB's exact bytes for a DELETE naming no revision, the write rules'
    status, `error` and reason for a doc or attachment outside the scope. Each refused doc
    has its one audit entry; none is recorded again as a denied request."""
    mine = report("r_mine", ("chw1_person", "area1"), patient_id="1001")
    assert (await audited.call("PUT", f"/{medic}/r_mine", auth=auth("chw1"), json=mine))[0] == 201
    foreign = report("r_theirs", ("p9", "house3"), patient_uuid="p9")
    over_p9 = report("p9", ("chw1_person", "area1"), patient_id="1001")  # in scope, over a foreign doc: W4
    p9 = backend.request("GET", f"/{medic}/p9")[1]
    refusals = [
        ("DELETE", f"/{medic}/r_mine", None, None, 409, "conflict", "Document update conflict."),
        ("PUT", f"/{medic}/r_theirs", foreign, None, 403, "forbidden", None),
        ("PUT", f"/{medic}/p9", over_p9, None, 409, "conflict", "Document update conflict."),
        ("PUT", f"/{medic}/p9/a.txt?rev={p9['_rev']}", None, b"x", 403, "forbidden",
         "the document is outside your replication scope"),
    ]  # fmt: skip
    for method, path, json, data, status, error, reason in refusals:
        got, body, headers = await audited.call(
            method, path, auth=auth("chw1"), json=json, data=data, headers=TEXT if data else None
        )
        assert (got, body["error"]) == (status, error), (path, body)
        assert list(body) == ["error", "reason"] and (reason is None or body["reason"] == reason), body
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Length"] == str(len(orjson.dumps(body))), headers  # CouchDB's compact JSON
    assert backend.request("GET", f"/{medic}/r_mine")[0] == 200
    entries = await audit_entries(audited, backend, "&user=chw1")
    assert not [e for e in entries if e["action"] == "request"], entries
    refused = sorted((e["doc_id"], e["action"]) for e in entries if e["outcome"] == "forbidden")
    assert refused == [("p9", "attachment"), ("p9", "update"), ("r_theirs", "create")], refused
