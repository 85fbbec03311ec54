"""Findings of an attacker's review (2026-11-29, the third): what CouchDB answers for the
leaves of a conflicted doc counted the ones outside the scope (`_bulk_get`); the ledger of
made-up revisions was read for a doc the user may not see and not for an id no doc has (a
timing oracle: `_revs_diff` told existing ids from missing ones, `_bulk_get` confirmed a
guessed winning revision); a malformed revision in `_revs_diff` was a 502 on CouchDB; and
`GET /_session` with a Basic credential and another user's cookie named the cookie's user
where couchgate acted for the Basic one. Each test failed before its fix (the first and
the 502 on CouchDB only: pouchdb-server answers only the winner, and takes any rev)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from identity_support import token_of

from proxy.devserver.backend import PouchServer
from proxy.keys import INDEX, REMOVALS

from offline_data import HOUSEHOLD, PASSWORD, auth, conflicted_house, move_house
from support import Gateway, assert_couch_error

CHW1 = auth("chw1")


async def test_bulk_get_leaves_hidden_leaves_out_instead_of_counting_them(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    base, away = conflicted_house(backend, medic)
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    for query, item in [("", {"id": "house1"}), ("?latest=true&revs=true", {"id": "house1", "rev": base})]:
        status, body, _ = await gw.call(
            "POST", f"/{medic}/_bulk_get{query}", auth=CHW1, json={"docs": [item]}
        )
        assert status == 200, body
        [row] = body["results"]
        assert [list(d) for d in row["docs"]] == [["ok"]], row  # the winner alone, no row for the other
        assert row["docs"][0]["ok"]["_rev"] == "2-" + "f" * 32
        assert away["_rev"] not in orjson.dumps(body).decode()


@pytest.fixture
def ledger_reads(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of a user's ledger of made-up revisions (each still goes to CouchDB)."""
    removals = gw.server.app[REMOVALS]
    reads: list[str] = []
    read = removals.ledger

    async def counted(user: str) -> Any:
        reads.append(user)
        return await read(user)

    monkeypatch.setattr(removals, "ledger", counted)
    return reads


async def test_a_doc_the_user_may_not_see_costs_what_a_missing_id_costs(
    gw: Gateway, medic: str, backend: PouchServer, ledger_reads: list[str]
) -> None:
    p9 = backend.request("GET", f"/{medic}/p9")[1]
    assert isinstance(p9, dict)
    status, body = backend.request("PUT", f"/{medic}/p9", {**p9, "edited": True})  # p9 of district2
    assert status == 201, body
    winner = body["rev"]
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    guess = "2-" + uuid.uuid4().hex
    missing = "no-such-" + uuid.uuid4().hex[:8]

    async def reads_for(method: str, path: str, doc_id: str, rev: str) -> tuple[int, Any]:
        """The ledger reads of one request, and its answer with the id and rev asked left out."""
        json: Any = {doc_id: [rev]} if path == "_revs_diff" else {"docs": [{"id": doc_id, "rev": rev}]}
        before = len(ledger_reads)
        status, body, _ = await gw.call(method, f"/{medic}/{path}", auth=CHW1, json=json)
        return len(ledger_reads) - before, (
            status,
            orjson.dumps(body).decode().replace(doc_id, "ID").replace(rev, "REV"),
        )

    asked = [("p9", guess), ("p9", winner), (missing, guess)]
    diffs = [await reads_for("POST", "_revs_diff", doc_id, rev) for doc_id, rev in asked]
    assert len({d for d in diffs}) == 1, diffs  # the same answer, and the same reads
    gets = [await reads_for("POST", "_bulk_get", doc_id, rev) for doc_id, rev in asked]
    assert len({g for g in gets}) == 1, gets


@pytest.mark.parametrize("revs", [{"p1": ["abc"]}, {"p1": ["x-y"]}, {"p9": ["abc"]}, {"nothing": ["1-"]}])
async def test_revs_diff_with_a_malformed_rev_is_couchdbs_400(gw: Gateway, medic: str, revs: Any) -> None:
    status, body, _ = await gw.call("POST", f"/{medic}/_revs_diff", auth=CHW1, json=revs)
    assert_couch_error(status, body, 400, "bad_request")
    assert body["reason"] == "Invalid rev format"


async def test_session_names_the_user_couchgate_acts_for(gw: Gateway, medic: str) -> None:
    status, body, headers = await gw.call(
        "POST", "/_session", json={"name": "chw2", "password": PASSWORD.format("chw2")}
    )
    assert status == 200, body
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    status, body, _ = await gw.call("GET", "/_session", headers={"Cookie": cookie})
    assert (status, body["userCtx"]["name"]) == (200, "chw2")
    status, body, _ = await gw.call("GET", "/_session", auth=CHW1, headers={"Cookie": cookie})
    assert (status, body["userCtx"]["name"]) == (200, "chw1"), body
    status, body, _ = await gw.call("GET", f"/{medic}/p1", auth=CHW1, headers={"Cookie": cookie})
    assert status == 200  # chw1's rules: p1 is in area1 (chw2's would refuse it)
    # A token caller's logout ends the token's user's tokens, and nothing of the cookie's
    # user: CouchDB is not sent the cookie (pouchdb-server answered it with chw2's Set-Cookie).
    bearer = await token_of(gw, "chw1", PASSWORD.format("chw1"))
    status, body, headers = await gw.call(
        "DELETE", "/_session", headers={"Authorization": bearer, "Cookie": cookie}
    )
    assert status == 200, body
    sessions = [c.split(";", 1)[0].split("=", 1)[1] for c in headers.getall("Set-Cookie", [])]
    assert all(not value for value in sessions), sessions  # no one's session: only a cleared one
    status, body, _ = await gw.call("GET", "/_session", headers={"Cookie": cookie})
    assert (status, body["userCtx"]["name"]) == (200, "chw2")  # the cookie's session goes on


async def test_no_page_asked_after_a_move_serves_what_it_took_out_of_the_scope(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fourth review's finding against a change tried and dropped: pages of a pull in
    progress answered from the index as it stood (without a round upstream) served the
    docs of a household moved away after the move was committed, bodies included. Every
    page, mid-pull too, reflects what CouchDB held when it was asked for. The index's
    rounds are held back (a slow CouchDB, the follower slower than the device) until a
    request asks for one: a page answered without asking shows the index before the move."""
    since, sent = "0", ""
    while sent != "house1":  # the pull goes on with the people and reports of house1
        status, body, _ = await gw.call("GET", f"/{medic}/_changes?since={since}&limit=1", auth=CHW1)
        assert status == 200 and len(body["results"]) == 1
        since, sent = body["last_seq"], body["results"][0]["id"]
    sync = gw.server.app[INDEX]
    gate = asyncio.Event()
    pull, level = sync._pull, sync.sync

    async def held() -> int:
        await gate.wait()
        return await pull()

    async def asked(*, probe: bool = False) -> None:
        if not probe:  # a request's (the follower's probes say probe=True)
            gate.set()
        await level(probe=probe)

    monkeypatch.setattr(sync, "_pull", held)
    monkeypatch.setattr(sync, "sync", asked)
    live: set[str] = set()
    try:
        move_house(backend, medic, "area3", "hc2", "district2")
        for _ in range(100):
            query = f"since={since}&limit=1&include_docs=true&style=all_docs"
            status, body, _ = await gw.call("GET", f"/{medic}/_changes?{query}", auth=CHW1)
            assert status == 200, body
            live |= {r["id"] for r in body["results"] if not r.get("deleted")}
            since = body["last_seq"]
            if not body["results"]:
                break
    finally:
        gate.set()
    assert not live & HOUSEHOLD, live & HOUSEHOLD
