"""Reads of given revisions for offline users: `rev`, `latest`, `open_revs` (JSON and
multipart), `_bulk_get`. A revision is returned only if it is readable itself, and a
request never reaches the backend in a form that kills it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.devserver.backend import PouchServer

from offline_data import auth, lineage, report
from support import Gateway, assert_couch_error

MISSING = {"error": "not_found", "reason": "missing"}
LOSER = "1-" + "0" * 32  # sorts below any real rev 1: the stored winner stays the winner
LOSER_OK = "1-" + "0" * 31 + "1"


def rev_of(backend: PouchServer, db: str, doc_id: str) -> str:
    return str(backend.request("GET", f"/{db}/{doc_id}")[1]["_rev"])


def move(backend: PouchServer, db: str, doc_id: str, *parents: str) -> tuple[str, str]:
    """Move a contact upstream; its old and new revs."""
    _, doc = backend.request("GET", f"/{db}/{doc_id}")
    old = doc["_rev"]
    doc["parent"] = lineage(*parents)
    status, body = backend.request("PUT", f"/{db}/{doc_id}", doc)
    assert status == 201, body
    return old, body["rev"]


async def test_rev_with_latest_for_a_missing_rev_is_missing_and_the_backend_lives(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    for query in ("rev=9-deadbeef&latest=true", "rev=9-deadbeef", "rev=1-deadbeef&latest=true&revs=true"):
        status, body, _ = await gw.call("GET", f"/{medic}/p1?{query}", auth=auth("chw1"))
        assert (status, body) == (404, MISSING), query
    assert backend.request("GET", "/")[0] == 200
    status, body, _ = await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
    assert status == 200
    status, body, _ = await gw.call("GET", f"/{medic}/p1?rev=not-a-rev", auth=auth("chw1"))
    assert_couch_error(status, body, 400, "bad_request")
    rev = rev_of(backend, medic, "p1")
    for query in (f"rev={rev}&latest=true", "latest=true"):
        status, body, _ = await gw.call("GET", f"/{medic}/p1?{query}", auth=auth("chw1"))
        assert status == 200 and body["_rev"] == rev
    assert backend.request("GET", "/")[0] == 200


async def test_a_doc_moved_in_does_not_reveal_where_it_was(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    old, new = move(backend, medic, "p3", "house1", "area1", "hc1", "district1")
    chw1 = auth("chw1")
    status, body, _ = await gw.call("GET", f"/{medic}/p3", auth=chw1)
    assert status == 200 and body["_rev"] == new
    status, body, _ = await gw.call("GET", f"/{medic}/p3?rev={old}", auth=chw1)
    assert (status, body) == (404, MISSING)
    status, body, _ = await gw.call("GET", f"/{medic}/p3?rev={new}", auth=chw1)
    assert status == 200 and body["parent"]["_id"] == "house1"
    # `latest` answers with the newest leaf, which is readable.
    status, body, _ = await gw.call("GET", f"/{medic}/p3?rev={old}&latest=true", auth=chw1)
    assert status == 200 and body["_rev"] == new
    status, body, _ = await gw.call("GET", f'/{medic}/p3?open_revs=["{old}","{new}"]', auth=chw1)
    assert status == 200 and {"missing": old} in body
    assert [r["ok"]["_rev"] for r in body if "ok" in r] == [new]
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?revs=true", auth=chw1, json={"docs": [{"id": "p3", "rev": old}]}
    )
    assert status == 200 and body["results"][0]["docs"][0]["error"]["error"] == "not_found"
    # The supervisor could read both versions.
    status, body, _ = await gw.call("GET", f"/{medic}/p3?rev={old}", auth=auth("supervisor"))
    assert status == 200 and body["parent"]["_id"] == "house2"


async def test_a_doc_moved_out_is_missing_in_every_revision(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    old, new = move(backend, medic, "p2", "house3", "area3", "hc2", "district2")
    for query in (f"rev={old}", f"rev={new}", "open_revs=all", f'open_revs=["{old}"]'):
        status, body, _ = await gw.call("GET", f"/{medic}/p2?{query}", auth=auth("chw1"))
        assert (status, body) == (404, MISSING), query


@pytest.fixture
def conflicted(medic: str, backend: PouchServer) -> dict[str, str]:
    """r_p1 with two losing conflicts: one about a foreign patient, one about p1."""
    winner = rev_of(backend, medic, "r_p1")
    foreign = {**report("r_p1", ("p9", "house3"), patient_uuid="p9"), "_rev": LOSER, "secret": "s"}
    mine = {**report("r_p1", ("chw1_person", "area1"), patient_id="1001"), "_rev": LOSER_OK}
    status, body = backend.request(
        "POST", f"/{medic}/_bulk_docs", {"docs": [foreign, mine], "new_edits": False}
    )
    assert status == 201, body
    assert rev_of(backend, medic, "r_p1") == winner
    return {"winner": winner, "foreign": LOSER, "mine": LOSER_OK}


async def test_conflicting_revisions_outside_the_scope_look_missing(
    gw: Gateway, medic: str, conflicted: dict[str, str]
) -> None:
    chw1 = auth("chw1")
    status, body, _ = await gw.call("GET", f"/{medic}/r_p1?open_revs=all", auth=chw1)
    assert status == 200
    assert sorted(r["ok"]["_rev"] for r in body if "ok" in r) == sorted(
        [conflicted["winner"], conflicted["mine"]]
    )
    # A leaf the user may not see is not named at all (asked for by name, it is missing).
    assert conflicted["foreign"] not in str(body) and "secret" not in str(body)
    status, body, _ = await gw.call("GET", f"/{medic}/r_p1?rev={conflicted['foreign']}", auth=chw1)
    assert (status, body) == (404, MISSING)
    status, body, _ = await gw.call("GET", f"/{medic}/r_p1?rev={conflicted['mine']}", auth=chw1)
    assert status == 200 and body["_rev"] == conflicted["mine"]
    asked = [{"id": "r_p1", "rev": conflicted["foreign"]}, {"id": "r_p1", "rev": conflicted["mine"]}]
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?latest=true", auth=chw1, json={"docs": asked}
    )
    foreign_row, mine_row = (row["docs"][0] for row in body["results"])
    assert foreign_row["error"]["error"] == "not_found" and "secret" not in str(body)
    assert mine_row["ok"]["_rev"] == conflicted["mine"]


async def test_open_revs_in_multipart(gw: Gateway, medic: str, conflicted: dict[str, str]) -> None:
    """CouchDB answers `open_revs` as multipart/mixed when asked to (pouchdb-server cannot,
    so couchgate writes it): one JSON part per revision, missing ones marked as errors."""
    url = f'{gw.url}/{medic}/r_p1?open_revs=["{conflicted["winner"]}","{conflicted["foreign"]}","9-abc"]'
    headers = {"Authorization": auth("chw1"), "Accept": "multipart/mixed"}
    parts: list[tuple[str, Any]] = []
    async with gw.http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "multipart/mixed"
        reader = aiohttp.MultipartReader.from_response(resp)
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            parts.append((part.headers["Content-Type"], await part.json()))
    # In no fixed order: pouchdb-server keeps the order asked, CouchDB 3.4 sorts by revision.
    found = [body for kind, body in parts if kind == "application/json"]
    missing = [body for kind, body in parts if kind == 'application/json; error="true"']
    assert [doc["_rev"] for doc in found] == [conflicted["winner"]] and len(parts) == 3
    assert sorted(body["missing"] for body in missing) == sorted([conflicted["foreign"], "9-abc"])


@pytest.mark.parametrize("query", ["open_revs=all", "open_revs=[\"{rev}\"]", "open_revs=[\"{rev}\"]&latest=true",
                                   "rev={rev}", "rev={rev}&latest=true"])  # fmt: skip
async def test_revisions_of_a_foreign_doc_look_exactly_like_a_missing_doc(
    gw: Gateway, medic: str, backend: PouchServer, query: str
) -> None:
    rev = rev_of(backend, medic, "p9")
    foreign = await gw.call("GET", f"/{medic}/p9?{query.format(rev=rev)}", auth=auth("chw1"))
    missing = await gw.call("GET", f"/{medic}/nothing-here?{query.format(rev=rev)}", auth=auth("chw1"))
    assert (foreign[0], foreign[1]) == (missing[0], missing[1]) == (404, MISSING)
    assert backend.request("GET", "/")[0] == 200
