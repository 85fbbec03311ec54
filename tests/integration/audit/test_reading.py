"""Reading the audit log through the API: a doc's history, filters, paging, bad input, and
who may read what."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from audit_support import admin, entries, oldest_first, page, pick

from proxy.audit import query
from proxy.audit.log import SECURITY
from proxy.devserver.backend import PouchServer

from offline_data import auth as offline_auth
from offline_data import report
from support import (
    MEMBER_ROLE,
    ON_COUCHDB,
    Gateway,
    TestUser,
    assert_couch_error,
    audited_gateway,
    basic,
)


def leaf(doc_id: str, revs: list[str], **fields: Any) -> dict[str, Any]:
    """A leaf whose history is `revs`, newest first (as tests/integration/conflicts make them)."""
    start = int(revs[0].split("-")[0])
    return {"_id": doc_id, "_rev": revs[0],
            "_revisions": {"start": start, "ids": [r.split("-", 1)[1] for r in revs]}, **fields}  # fmt: skip


async def test_a_docs_history_through_a_real_conflict_resolution(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    revs = [(await agw.call("PUT", f"/{db}/patient", auth=alice, json={"v": 0}))[1]["rev"]]
    for v in (1, 2):
        body = {"v": v, "_rev": revs[-1]}
        revs.append((await agw.call("PUT", f"/{db}/patient", auth=alice, json=body))[1]["rev"])
    # A second branch from rev 2, as a replicating client would bring it: a real conflict.
    branch = leaf("patient", ["3-bbbb", revs[1], revs[0]], v=9)
    status, _, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice,
                                  json={"docs": [branch], "new_edits": False})  # fmt: skip
    assert status == 201
    assert backend.request("GET", f"/{db}/patient?conflicts=true")[1].get("_conflicts")  # type: ignore[union-attr]
    status, resolved, _ = await agw.call("POST", f"/{db}/_couchgate/conflicts/patient/resolve",
                                         auth=admin(backend), json={"strategy": "pick", "rev": revs[2]})  # fmt: skip
    assert status == 200, resolved
    _, winner = backend.request("GET", f"/{db}/patient?conflicts=true")
    assert "_conflicts" not in winner  # type: ignore[operator]
    _, deleted, _ = await agw.call("DELETE", f"/{db}/patient?rev={winner['_rev']}", auth=alice)  # type: ignore[index]
    history = await oldest_first(agw, backend, "&doc=patient")
    # The resolution is one request writing two revs: the kept leaf and the losing branch's
    # tombstone, each with its entry (recorded by proxy/conflicts).
    tombstone = next(e["rev_after"] for e in history if e["details"].get("kind") == "tombstone")
    assert pick(history, "action", "user", "outcome", "rev_before", "rev_after") == [
        ("create", "alice", "written", None, revs[0]),
        ("update", "alice", "written", revs[0], revs[1]),
        ("update", "alice", "written", revs[1], revs[2]),
        ("replicate", "alice", "written", None, "3-bbbb"),
        ("resolve", backend.admin_user, "written", revs[2], winner["_rev"]),  # type: ignore[index]
        ("resolve", backend.admin_user, "written", "3-bbbb", tombstone),
        ("delete", "alice", "written", winner["_rev"], deleted["rev"]),  # type: ignore[index]
    ]
    assert len({e["request_id"] for e in history if e["action"] == "resolve"}) == 1
    pages, url = [], "/_couchgate/audit/docs/patient?limit=2"
    while url:
        body = await page(agw, backend, url)
        pages.append([e["action"] for e in body["entries"]])
        url = f"/_couchgate/audit/docs/patient?limit=2&next={body['next']}" if body["next"] else ""
    assert pages == [["delete", "resolve"], ["resolve", "replicate"], ["update", "update"], ["create"]]


async def test_filters_by_outcome_and_time(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    for name in ("one", "two", "one", "three", "two"):  # the repeats are conflicts
        await agw.call("PUT", f"/{db}/{name}", auth=alice, json={})
        await asyncio.sleep(0.002)  # distinct milliseconds, so `until` can fall between entries
    assert pick(await entries(agw, backend, "&outcome=conflict"), "doc_id", "outcome") == [
        ("two", "conflict"),
        ("one", "conflict"),
    ]
    every = await entries(agw, backend)
    assert [e["doc_id"] for e in every] == ["two", "three", "one", "two", "one"]
    third = every[2]
    assert [e["doc_id"] for e in await entries(agw, backend, f"&until={third['ts']}")] == [
        "one",
        "two",
        "one",
    ]
    assert [e["doc_id"] for e in await entries(agw, backend, f"&since={third['ts']}")] == [
        "two",
        "three",
        "one",
    ]
    iso_until = third["time"]  # the same instant as an ISO-8601 time
    window = await entries(agw, backend, f"&since={every[3]['ts']}&until={iso_until}&outcome=written")
    assert [e["doc_id"] for e in window] == ["two"]
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert await entries(agw, backend, f"&since={later}") == []


async def all_pages(gw: Gateway, backend: PouchServer, url: str) -> tuple[list[list[str]], list[str]]:
    """Every page of `url` (its doc ids), following `next` to the end."""
    pages: list[list[str]] = []
    found: list[str] = []
    mark = ""
    while True:
        body = await page(gw, backend, url + (f"&next={mark}" if mark else ""))
        pages.append([e["doc_id"] for e in body["entries"]])
        found += pages[-1]
        if body["next"] is None:
            return pages, found
        mark = body["next"]
        assert len(pages) < 100


async def test_paging_with_two_filters_finds_every_match(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = users["alice"].auth
    expected_deletes, expected_conflicts = [], []
    for round_ in range(4):
        docs = [{"_id": f"r{round_}-{i:02d}"} for i in range(30)]
        rows = (await agw.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs}))[1]
        for row in rows[:2]:
            await agw.call("DELETE", f"/{db}/{row['id']}?rev={row['rev']}", auth=alice)
            expected_deletes.insert(0, row["id"])
        await agw.call("PUT", f"/{db}/{rows[5]['id']}", auth=alice, json={})  # a conflict
        expected_conflicts.insert(0, rows[5]["id"])
    # user + action: an index of its own; every page full until the last.
    pages, found = await all_pages(agw, backend, "/_couchgate/audit?user=alice&action=delete&limit=5")
    assert found == expected_deletes and [len(p) for p in pages] == [5, 3]
    # user + action + outcome: the third filter is applied to the rows read; with a small scan
    # budget, pages come back short (even empty) but `next` goes on until every match is found.
    monkeypatch.setattr(query, "SCAN_PAGE", 10)
    monkeypatch.setattr(query, "PAGES", 2)
    pages, found = await all_pages(
        agw, backend, "/_couchgate/audit?user=alice&action=create&outcome=conflict&limit=5"
    )
    assert found == expected_conflicts
    assert [] in pages  # the budget ran out at least once, and paging went on


BAD_QUERIES = [
    "since=%C2%B2",  # a digit, but not an ASCII one
    "since=99999999999999999999999",
    "until=253402300800000",  # past 9999
    "since=2025-01-02&until=2025-01-01",
    "since=2025-01-02T00:00:00.5x",
    "until=2025-13-45",
    "since=yesterday",
    "limit=-1",
    "limit=ten",
    "next=!!!",
    "next=W10",  # base64 of []
    "user=alice&next=" + query.encode_bookmark(["user", "bob", 1, "audit-w-1"]),  # another query's
    "since=5000&next=" + query.encode_bookmark(["*", "", 10, "audit-w-1"]),  # before `since`
]


@pytest.mark.parametrize("params", BAD_QUERIES)
async def test_bad_parameters_are_400_bad_request(agw: Gateway, backend: PouchServer, params: str) -> None:
    status, body, _ = await agw.call("GET", f"/_couchgate/audit?{params}", auth=admin(backend))
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await agw.call("GET", f"/_couchgate/audit/docs/x?{params}", auth=admin(backend))
    assert_couch_error(status, body, 400, "bad_request")


async def test_only_admins_list_entries(agw: Gateway, users: dict[str, TestUser]) -> None:
    status, body, _ = await agw.call("GET", "/_couchgate/audit", auth=users["alice"].auth)
    assert_couch_error(status, body, 403, "forbidden")


async def test_history_is_of_one_database(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    other = f"{db}-other"
    assert backend.request("PUT", f"/{other}")[0] == 201
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": [MEMBER_ROLE]}}
    backend.request("PUT", f"/{other}/_security", security)
    alice = users["alice"].auth
    try:
        mine = (await agw.call("PUT", f"/{db}/same", auth=alice, json={}))[1]["rev"]
        theirs = (await agw.call("PUT", f"/{other}/same", auth=alice, json={"x": 1}))[1]["rev"]
        main = await page(agw, backend, "/_couchgate/audit/docs/same")
        assert pick(main["entries"], "db", "rev_after") == [(db, mine)]
        elsewhere = await page(agw, backend, f"/_couchgate/audit/docs/same?db={other}")
        assert pick(elsewhere["entries"], "db", "rev_after") == [(other, theirs)]
        status, body, _ = await agw.call("GET", "/_couchgate/audit/docs/same", auth=alice)
        assert status == 200 and pick(body["entries"], "db") == [(db,)]
        status, body, _ = await agw.call("GET", f"/_couchgate/audit/docs/same?db={other}", auth=alice)
        assert_couch_error(status, body, 403, "forbidden")
    finally:
        backend.request("DELETE", f"/{other}")


async def test_offline_users_read_history_of_docs_they_can_read(backend: PouchServer, medic: str) -> None:
    async with audited_gateway(backend, medic) as gw:
        await gw.call(
            "PUT",
            f"/{medic}/r_mine",
            auth=offline_auth("chw1"),
            json=report("x", ("chw1_person",), patient_id="1001"),
        )
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/r_mine", auth=offline_auth("chw1"))
        assert status == 200 and [e["action"] for e in body["entries"]] == ["create"]
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/r_mine", auth=offline_auth("chw2"))
        assert_couch_error(status, body, 404, "not_found")


async def test_the_audit_database_is_for_admins_only(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    await agw.call("PUT", f"/{db}/secret", auth=users["alice"].auth, json={})
    assert len(await entries(agw, backend)) == 1  # flushed: the audit database exists
    audit_db = agw.settings.audit_db
    assert backend.request("GET", f"/{audit_db}/_security")[1] == SECURITY
    # alice is a member of the main database, yet cannot read the audit log upstream...
    request = urllib.request.Request(f"{backend.url}/{audit_db}/_all_docs?include_docs=true",
                                     headers={"Authorization": basic("alice", "alice-pass")})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    refused.value.close()
    assert refused.value.code == (403 if ON_COUCHDB else 401)  # pouchdb-server: 401 for non-members
    # ...nor through couchgate, which forwards her as herself.
    status, _, _ = await agw.call("GET", f"/{audit_db}/_all_docs", auth=users["alice"].auth)
    assert status == (403 if ON_COUCHDB else 401)


async def test_an_offline_user_reads_only_the_history_of_the_winners_branch(
    backend: PouchServer, medic: str
) -> None:
    """A write to a conflict leaf placed outside chw1's scope names that leaf's revision:
    the history chw1 reads holds only the writes on the winner's branch."""
    async with audited_gateway(backend, medic) as gw:
        house = backend.request("GET", f"/{medic}/house1")[1]
        base = house["_rev"]
        stay = leaf("house1", ["2-" + "f" * 32, base], **{k: v for k, v in house.items() if k[0] != "_"})
        away = leaf("house1", ["2-" + "0" * 32, base], type="clinic",
                    parent={"_id": "area3", "parent": {"_id": "hc2", "parent": {"_id": "district2"}}})  # fmt: skip
        for doc in (stay, away):  # written by an admin through couchgate: both audited
            status, body, _ = await gw.call(
                "POST", f"/{medic}/_bulk_docs", auth=admin(backend), json={"docs": [doc], "new_edits": False}
            )
            assert status == 201, body
        assert (await gw.call("GET", f"/{medic}/_changes", auth=offline_auth("chw1")))[0] == 200
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/house1", auth=admin(backend))
        assert status == 200 and {e["rev_after"] for e in body["entries"]} >= {stay["_rev"], away["_rev"]}
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/house1", auth=offline_auth("chw1"))
        assert status == 200, body
        assert [e["rev_after"] for e in body["entries"]] == [stay["_rev"]], body


async def test_what_a_write_replaced_off_the_winners_branch_is_not_named(
    backend: PouchServer, medic: str
) -> None:
    """The supervisor (who sees area1 and area2) makes the area1 branch of house1 win over
    the area2 one; chw1 (area1) reads that write in the history, but not the revision it
    replaced: the area2 leaf, which chw1 may not know of."""
    async with audited_gateway(backend, medic) as gw:
        house = backend.request("GET", f"/{medic}/house1")[1]
        base, fields = house["_rev"], {k: v for k, v in house.items() if k[0] != "_"}
        area2 = {"_id": "area2", "parent": {"_id": "hc1", "parent": {"_id": "district1"}}}
        there = leaf("house1", ["2-" + "f" * 32, base], **{**fields, "parent": area2})
        here = leaf("house1", ["2-" + "0" * 32, base], **fields)
        status, body = backend.request(
            "POST", f"/{medic}/_bulk_docs", {"docs": [there, here], "new_edits": False}
        )
        assert status == 201, body
        supervisor = offline_auth("supervisor")
        assert (await gw.call("GET", f"/{medic}/_changes", auth=supervisor))[0] == 200
        won = leaf("house1", ["3-" + "a" * 32, here["_rev"], base], **fields)
        status, body, _ = await gw.call(
            "POST", f"/{medic}/_bulk_docs", auth=supervisor, json={"docs": [won], "new_edits": False}
        )
        assert status == 201 and body == [], body
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/house1", auth=admin(backend))
        assert [(e["rev_after"], e["rev_before"]) for e in body["entries"]] == [(won["_rev"], there["_rev"])]
        assert (await gw.call("GET", f"/{medic}/_changes", auth=offline_auth("chw1")))[0] == 200
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/house1", auth=offline_auth("chw1"))
        assert status == 200, body
        assert [(e["rev_after"], e["rev_before"]) for e in body["entries"]] == [(won["_rev"], None)], body
