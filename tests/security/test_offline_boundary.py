"""The offline boundary, played by a hostile offline user against the real test backend.

Each test is one class of attack (docs/security.md names the rule that stops it); each
was seen working before its fix. The attacker is `chw1` (area1 in the tree of
tests/offline_data.py), with nothing but their own password; the victims are `chw2`
(area2), the supervisor (hc1) and the foreign district2 -> hc2 -> area3 -> house3 -> p9.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from proxy.couch.client import JsonResult
from proxy.devserver.backend import PouchServer
from proxy.keys import COUCH, INDEX

from offline_data import auth, lineage, person, place, report
from support import Gateway, assert_couch_error

MISSING = {"error": "not_found", "reason": "missing"}
CHW1, CHW2, SUP = auth("chw1"), auth("chw2"), auth("supervisor")
MINE = ("chw1_person", "area1", "hc1", "district1")


def doc_of(backend: PouchServer, db: str, doc_id: str) -> dict[str, Any]:
    status, body = backend.request("GET", f"/{db}/{doc_id}")
    assert status == 200, body
    return dict(body)


def put(backend: PouchServer, db: str, doc: dict[str, Any]) -> str:
    status, body = backend.request("PUT", f"/{db}/{doc['_id']}", doc)
    assert status in (200, 201), body  # CouchDB answers a deletion 200, pouchdb-server 201
    return str(body["rev"])


async def reads(gw: Gateway, db: str, who: str, doc_id: str) -> bool:
    """Whether `who` can read the doc, by the changes feed (which brings the index level
    with CouchDB first) and by GET."""
    status_feed, feed, _ = await gw.call("GET", f"/{db}/_changes", auth=who)
    status, _, _ = await gw.call("GET", f"/{db}/{doc_id}", auth=who)
    assert status_feed == 200
    in_feed = doc_id in {r["id"] for r in feed["results"] if not r.get("deleted")}
    assert (status == 200) == in_feed, (doc_id, status, in_feed)
    return status == 200


# -- 1. planted keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "victims"),
    [
        ("patient_id", "hc2", ["r_hc2"]),  # another contact's _id
        ("place_id", "area3", ["r_area3"]),
        ("patient_id", "org.couchdb.user:chw2", ["task_chw2", "org.couchdb.user:chw2"]),  # a user's doc id
        ("patient_id", "_unassigned", ["r_unallocated"]),
        ("patient_id", "3003", ["r_p3"]),  # another area's shortcode
    ],
)  # fmt: skip
async def test_planted_keys_grant_nothing(
    gw: Gateway, medic: str, backend: PouchServer, field: str, value: str, victims: list[str]
) -> None:
    put(backend, medic, report("r_hc2", ("p9", "house3", "area3", "hc2"), patient_id="hc2"))
    put(backend, medic, report("r_area3", ("p9", "house3", "area3", "hc2"), place_id="area3"))
    planted = {**person("planted", "house1", "area1", "hc1", "district1"), field: value}
    status, body, _ = await gw.call("PUT", f"/{medic}/planted", auth=CHW1, json=planted)
    if value.startswith(("_", "org.couchdb.user:")):
        assert status == 201, body  # a reserved value is no shortcode at all: it names nothing
    else:
        assert_couch_error(status, body, 403, "forbidden")  # W9: offline users set no shortcodes
        if "r_p3" in victims:
            assert await reads(gw, medic, CHW2, "r_p3")  # the victims' own users keep what is theirs
        # The same plant by a trusted writer (straight into CouchDB) grants nothing either
        # (two contacts claiming one shortcode: it names nobody).
        put(backend, medic, planted)
    for victim in victims:
        assert not await reads(gw, medic, CHW1, victim), victim
    # Nor writable: the foreign health center keeps its name.
    hc2 = {**doc_of(backend, medic, "hc2"), "name": "renamed"}
    status, body, _ = await gw.call("PUT", f"/{medic}/hc2", auth=CHW1, json=hc2)
    assert status in (403, 409) and doc_of(backend, medic, "hc2")["name"] == "hc2", body


async def test_a_contact_named_after_a_foreign_shortcode_takes_nothing(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    body = person("3003", "house1", "area1", "hc1", "district1")  # p3's shortcode as an _id
    status, answer, _ = await gw.call("PUT", f"/{medic}/3003", auth=CHW1, json=body)
    assert_couch_error(status, answer, 403, "forbidden")  # W10
    assert backend.request("GET", f"/{medic}/3003")[0] == 404
    assert not await reads(gw, medic, CHW1, "r_p3")
    assert await reads(gw, medic, CHW2, "r_p3")


async def test_a_deleted_planted_shortcode_grants_nothing_afterwards(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A shortcode held by a deleted contact names nobody (the grant did outlive the plant)."""
    put(backend, medic, report("r_code", ("p9", "house3", "area3"), patient_id="9009"))
    rev = put(backend, medic, person("holder", "house3", "area3", "hc2", "district2", shortcode="9009"))
    assert not await reads(gw, medic, CHW1, "r_code")
    # A trusted writer moves the holder into area1 and deletes it there.
    moved = {**person("holder", "house1", "area1", "hc1", "district1", shortcode="9009"), "_rev": rev}
    rev = put(backend, medic, moved)
    assert await reads(gw, medic, CHW1, "r_code")  # the one live holder is in area1: that is the tree
    backend.request("DELETE", f"/{medic}/holder?rev={rev}")
    assert not await reads(gw, medic, CHW1, "r_code")


async def test_two_contacts_claiming_one_shortcode_name_nobody(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    put(backend, medic, person("twin", "house3", "area3", "hc2", "district2", shortcode="1001"))
    assert not await reads(gw, medic, CHW1, "r_p1")  # r_p1 names p1 by shortcode 1001
    assert await reads(gw, medic, CHW1, "r_p2")  # by id: unaffected


# -- 2. what is judged is what is forwarded ---------------------------------------------------


async def test_unknown_and_doubled_parameters_never_reach_the_backend(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    old = doc_of(backend, medic, "p9")["_rev"]  # p9 moves into area1: its first rev is foreign
    put(backend, medic, {**person("p9", "house1", "area1", "hc1", "district1"), "_rev": old})
    for query in (f"open_revs[]={old}", f"open_revs[0]={old}", f"open_revs%5B%5D={old}"):
        status, body, _ = await gw.call("GET", f"/{medic}/p9?{query}", auth=CHW1)
        assert status == 200 and isinstance(body, dict) and body["_rev"] != old, (query, body)
    status, body, _ = await gw.call("GET", f'/{medic}/p9?open_revs=["{old}"]', auth=CHW1)
    assert status == 200 and body == [{"missing": old}]  # the foreign revision is judged itself
    for query in ("latest=1", "latest=TRUE", "revs=yes", f"rev={old}&rev={old}"):
        status, body, _ = await gw.call("GET", f"/{medic}/p1?{query}", auth=CHW1)
        assert_couch_error(status, body, 400, "bad_request")
    # `docs=` in the query of `_bulk_get` would override the body on the backend.
    docs = orjson.dumps([{"id": "r_p9"}, {"id": "settings"}]).decode()
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?docs={docs}", auth=CHW1, json={"docs": [{"id": "p1"}]}
    )
    assert status == 200 and [r["id"] for r in body["results"]] == ["p1"]
    assert backend.request("GET", "/")[0] == 200  # nothing took it down


async def test_forwarded_queries_are_rebuilt_from_the_parse(
    gw: Gateway, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every caller kind, couchgate sends what it parsed, never the client's raw query."""
    couch = gw.server.app[COUCH]
    targets: list[str] = []
    real = couch.stream

    def spy(method: str, path_and_query: str, **kwargs: Any) -> Any:
        targets.append(path_and_query)
        return real(method, path_and_query, **kwargs)

    monkeypatch.setattr(couch, "stream", spy)
    admin = "Basic " + __import__("base64").b64encode(b"admin:pass").decode()
    await gw.call("GET", f"/{medic}/_all_docs?limit=1;skip=5&x=%00", auth=admin, raw_path=True)
    sent = [t for t in targets if "/_all_docs" in t]
    assert sent == [f"/{medic}/_all_docs?limit=1%3Bskip%3D5&x=%00"], targets


async def test_a_missing_rev_with_latest_never_reaches_the_backend(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    for path in (f"/{medic}/p1?rev=9-deadbeef&latest=true", f'/{medic}/p1?open_revs=["9-dead"]&latest=true'):
        status, _, _ = await gw.call("GET", path, auth=CHW1)
        assert status in (200, 404)
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?latest=true", auth=CHW1, json={"docs": [{"id": "p1", "rev": "9-dead"}]}
    )
    assert status == 200 and "error" in body["results"][0]["docs"][0]
    assert backend.request("GET", "/")[0] == 200


# -- 3. raw _local docs -----------------------------------------------------------------------


async def test_local_ids_in_bodies_are_refused(gw: Gateway, medic: str, backend: PouchServer) -> None:
    status, _, _ = await gw.call("PUT", f"/{medic}/_local/checkpoint", auth=CHW2, json={"last_seq": "theirs"})
    assert status == 201
    body = {**report("x", MINE, patient_id="p1"), "_id": "_local/checkpoint"}
    status, rows, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [body]})
    assert status == 201 and rows[0]["error"] == "forbidden", rows
    status, answer, _ = await gw.call("POST", f"/{medic}", auth=CHW1, json=body)
    assert_couch_error(status, answer, 403, "forbidden")
    assert backend.request("GET", f"/{medic}/_local/checkpoint")[0] == 404  # nothing un-namespaced
    status, theirs, _ = await gw.call("GET", f"/{medic}/_local/checkpoint", auth=CHW2)
    assert status == 200 and theirs["last_seq"] == "theirs"


# -- 4. moving own contacts out -----------------------------------------------------------------


async def test_own_contacts_cannot_be_moved_or_detached_out(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    house = doc_of(backend, medic, "house1")
    moved = {**house, "parent": lineage("hc2", "district2")}
    status, body, _ = await gw.call("PUT", f"/{medic}/house1", auth=CHW1, json=moved)
    assert_couch_error(status, body, 403, "forbidden")
    p1 = doc_of(backend, medic, "p1")
    detached = {k: v for k, v in p1.items() if k != "parent"}
    status, rows, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [detached, {**moved, "x": 1}]}
    )
    assert status == 201 and [r.get("error") for r in rows] == ["forbidden", "forbidden"], rows
    assert doc_of(backend, medic, "house1")["_rev"] == house["_rev"]
    assert doc_of(backend, medic, "p1")["_rev"] == p1["_rev"]
    # A move within the area is a move like any other.
    inside = {**p1, "parent": lineage("area1", "hc1", "district1")}
    status, body, _ = await gw.call("PUT", f"/{medic}/p1", auth=CHW1, json=inside)
    assert status == 201, body


# -- 5. a doc moving out while it is read ------------------------------------------------------


async def test_bodies_are_judged_even_when_the_index_is_behind(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await gw.call("GET", f"/{medic}/_changes", auth=CHW1)  # the index is built and level
    sync = gw.server.app[INDEX]

    async def stale() -> None:  # the index stops hearing from CouchDB: the race, held open
        return None

    monkeypatch.setattr(sync, "sync", stale)
    p1 = doc_of(backend, medic, "p1")
    put(backend, medic, {**p1, "parent": lineage("house3", "area3", "hc2", "district2"), "name": "moved"})
    status, body, _ = await gw.call("GET", f"/{medic}/p1", auth=CHW1)
    assert (status, body) == (404, MISSING)
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?include_docs=true", auth=CHW1)
    assert status == 200 and "moved" not in orjson.dumps(feed).decode()
    status, docs, _ = await gw.call("GET", f"/{medic}/_all_docs?include_docs=true", auth=CHW1)
    assert status == 200 and "moved" not in orjson.dumps(docs).decode()
    status, docs, _ = await gw.call(
        "POST", f"/{medic}/_all_docs?include_docs=true", auth=CHW1, json={"keys": ["p1"]}
    )
    assert status == 200 and docs["rows"] == [{"key": "p1", "error": "not_found"}]
    status, got, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?latest=true", auth=CHW1, json={"docs": [{"id": "p1", "rev": p1["_rev"]}]}
    )
    assert status == 200 and "moved" not in orjson.dumps(got).decode()
    status, att, _ = await gw.call("GET", f"/{medic}/p1?open_revs=all", auth=CHW1)
    assert status == 200 and "moved" not in orjson.dumps(att).decode()


async def test_a_body_judged_before_its_read_is_judged_again_when_the_tree_moved_meanwhile(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_bulk_get` judges the ids it asks for, then serves each body of the judged winner
    without judging it again: only while the index has not moved. Here the household
    moves out of the CHW's area while the bodies are read upstream (p1's own revision is
    unchanged, so only the tree says it left): p1 is served as missing."""
    await gw.call("GET", f"/{medic}/_changes", auth=CHW1)  # the index is built and level
    sync = gw.server.app[INDEX]
    couch = gw.server.app[COUCH]
    real = couch.json
    p1 = doc_of(backend, medic, "p1")

    async def moving_meanwhile(method: str, path: str, **kwargs: Any) -> JsonResult:
        if method == "POST" and path.endswith("/_bulk_get"):
            house = doc_of(backend, medic, "house1")
            put(backend, medic, {**house, "parent": lineage("area3", "hc2", "district2")})
            await sync.sync()
        return await real(method, path, **kwargs)

    monkeypatch.setattr(couch, "json", moving_meanwhile)
    status, got, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get", auth=CHW1, json={"docs": [{"id": "p1", "rev": p1["_rev"]}]}
    )
    assert status == 200, got
    assert got["results"][0]["docs"][0]["error"]["error"] == "not_found", got
    assert p1["_rev"] == doc_of(backend, medic, "p1")["_rev"]  # the doc itself did not change


# -- 6. fail closed --------------------------------------------------------------------------


def failing(gw: Gateway, monkeypatch: pytest.MonkeyPatch, method: str, suffix: str) -> None:
    """The backend answers 500 to one kind of read (a fault a healthy server will not show)."""
    couch = gw.server.app[COUCH]
    real = couch.json

    async def fault(m: str, path: str, **kwargs: Any) -> JsonResult:
        if m == method and path.endswith(suffix):
            return JsonResult(500, {"error": "unknown_error", "reason": "injected"}, {})
        return await real(m, path, **kwargs)

    monkeypatch.setattr(couch, "json", fault)


async def an_edit_is_refused_unwritten(gw: Gateway, medic: str, backend: PouchServer) -> None:
    """An edit of a doc of chw1's, as a PUT and as a replication push: refused (5xx), unwritten."""
    p1 = doc_of(backend, medic, "p1")
    edited = {**p1, "name": "edited"}
    status, body, _ = await gw.call("PUT", f"/{medic}/p1", auth=CHW1, json=edited)
    assert status >= 500 and body["error"] in ("bad_gateway", "service_unavailable"), body
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [edited], "new_edits": False}
    )
    assert status >= 500, body
    assert doc_of(backend, medic, "p1")["_rev"] == p1["_rev"]


async def test_a_failed_read_behind_a_decision_refuses(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await gw.call("GET", f"/{medic}/_changes", auth=CHW1)
    failing(gw, monkeypatch, "POST", "/_all_docs")
    failing(gw, monkeypatch, "POST", "/_bulk_get")
    # A write over a doc of the user's, with the read of stored docs failing: refused, not
    # forwarded (the stored body decides). A foreign doc is refused from the index, unread.
    await an_edit_is_refused_unwritten(gw, medic, backend)
    p9 = doc_of(backend, medic, "p9")
    into_scope = {**p9, "parent": lineage("house1", "area1", "hc1", "district1")}
    status, body, _ = await gw.call("PUT", f"/{medic}/p9", auth=CHW1, json=into_scope)
    assert status in (403, 409), body
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [into_scope], "new_edits": False}
    )
    assert status == 201 and body[0]["error"] == "forbidden", body
    assert doc_of(backend, medic, "p9")["_rev"] == p9["_rev"]
    # A feed page whose bodies cannot be read fails: never live docs sent as tombstones.
    status, body, _ = await gw.call("GET", f"/{medic}/_changes?include_docs=true", auth=CHW1)
    assert status >= 500 and "deleted" not in orjson.dumps(body).decode(), body


async def test_a_stored_doc_read_that_answers_neither_doc_nor_missing_refuses(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored docs are read with `_bulk_get`; a row that is neither a doc nor CouchDB's
    "missing" (a shard's error, pouchdb-server's `{}` for a deleted doc) is read again with
    `_all_docs`, and when that read fails too the write is refused, never judged as new."""
    await gw.call("GET", f"/{medic}/_changes", auth=CHW1)
    couch = gw.server.app[COUCH]
    real = couch.json

    async def shard_error(m: str, path: str, **kwargs: Any) -> JsonResult:
        if m == "POST" and path.endswith("/_bulk_get"):
            ids = [d["id"] for d in kwargs["body"]["docs"]]
            error = {"error": "unknown_error", "reason": "timeout", "rev": "undefined"}
            return JsonResult(
                200, {"results": [{"id": i, "docs": [{"error": {**error, "id": i}}]} for i in ids]}, {}
            )
        return await real(m, path, **kwargs)

    monkeypatch.setattr(couch, "json", shard_error)
    failing(gw, monkeypatch, "POST", "/_all_docs")
    await an_edit_is_refused_unwritten(gw, medic, backend)


# -- 7. existence oracles --------------------------------------------------------------------


async def same(gw: Gateway, *requests: tuple[str, str, Any]) -> Any:
    answers = []
    for method, path, json in requests:
        status, body, _ = await gw.call(method, path, auth=CHW1, json=json)
        answers.append((status, body))
    assert all(a == answers[0] for a in answers), answers
    return answers[0]


async def test_a_foreign_id_reads_and_writes_like_a_missing_one(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    foreign, missing = "r_p9", "r_nowhere"
    f_rev = doc_of(backend, medic, foreign)["_rev"]
    outside = report("x", ("p9", "house3", "area3"), patient_uuid="p9")
    inside = report("x", MINE, patient_uuid="p1")
    for fmt in ("/{}", "/{}?revs=true&open_revs=all", "/{}/att.txt"):
        await same(
            gw,
            ("GET", f"/{medic}" + fmt.format(foreign), None),
            ("GET", f"/{medic}" + fmt.format(missing), None),
        )
    await same(gw, ("PUT", f"/{medic}/{foreign}", outside), ("PUT", f"/{medic}/{missing}", outside))
    await same(gw, ("PUT", f"/{medic}/{foreign}", {**inside, "_rev": f_rev}),
               ("PUT", f"/{medic}/{missing}", {**inside, "_rev": "1-abc"}))  # fmt: skip
    await same(
        gw,
        ("DELETE", f"/{medic}/{foreign}?rev={f_rev}", None),
        ("DELETE", f"/{medic}/{missing}?rev=1-abc", None),
    )
    for endpoint, make in (
        ("_all_docs", lambda i: {"keys": [i]}),
        ("_bulk_get", lambda i: {"docs": [{"id": i}]}),
        ("_revs_diff", lambda i: {i: ["1-abc"]}),
    ):
        (_, a, _), (_, b, _) = [
            await gw.call("POST", f"/{medic}/{endpoint}", auth=CHW1, json=make(i)) for i in (foreign, missing)
        ]
        assert orjson.dumps(a).decode().replace(foreign, "ID") == orjson.dumps(b).decode().replace(
            missing, "ID"
        )
    # The import and its dry run: out-of-scope content is `forbidden` either way; content in
    # the scope over a foreign id is a `conflict` (the id is taken), never `unchanged`.
    for dry in ("true", "false"):
        rows = []
        for doc_id in (foreign, missing):
            status, body, _ = await gw.call(
                "POST", f"/import?dry_run={dry}", auth=CHW1, json=[{**outside, "_id": doc_id}]
            )
            assert status == 200
            rows.append({k: v for k, v in body["results"][0].items() if k != "id"})
        assert rows[0] == rows[1] and rows[0]["status"] == "forbidden", rows
        status, body, _ = await gw.call(
            "POST", f"/import?dry_run={dry}", auth=CHW1, json=[{**inside, "_id": foreign}]
        )
        row = body["results"][0]
        assert row["status"] == "conflict" and "rev" not in row, row
    assert doc_of(backend, medic, foreign)["_rev"] == f_rev
    assert backend.request("GET", f"/{medic}/{missing}")[0] == 404


# -- 8. forged submitter -------------------------------------------------------------------


@pytest.mark.parametrize(
    "submitter",
    [
        ("p3", "house2", "area2", "hc1", "district1"),
        ("p9", "house3", "area3", "hc2"),
        ("chw1_person", "area3", "hc2"),
    ],
)
async def test_a_report_names_a_submitter_of_ones_own_area(
    gw: Gateway, medic: str, backend: PouchServer, submitter: tuple[str, ...]
) -> None:
    forged = report("r_forged", submitter, patient_uuid="p1", needs_signoff=True)
    status, body, _ = await gw.call("PUT", f"/{medic}/r_forged", auth=CHW1, json=forged)
    assert_couch_error(status, body, 403, "forbidden")
    assert backend.request("GET", f"/{medic}/r_forged")[0] == 404
    assert not await reads(gw, medic, CHW2, "r_forged")


# -- 9. hostile shapes are 400, never 500 ----------------------------------------------------


async def test_hostile_shapes_are_400(gw: Gateway, medic: str) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    body = orjson.dumps({**report("r_deep", MINE, patient_uuid="p1"), "deep": 0}).replace(
        b'"deep":0', b'"deep":' + b"[" * 300 + b"1" + b"]" * 300
    )
    for method, path in (("PUT", f"/{medic}/r_deep"), ("POST", f"/{medic}/_bulk_docs")):
        data = body if method == "PUT" else b'{"docs":[' + body + b"]}"
        status, answer, _ = await gw.call(
            method, path, auth=CHW1, data=data, headers={"Content-Type": "application/json"}
        )
        assert_couch_error(status, answer, 400, "bad_request")
    for query in ("skip=18446744073709551616", "limit=18446744073709551616", "skip=-1"):
        status, answer, _ = await gw.call("GET", f"/{medic}/_all_docs?{query}", auth=CHW1)
        assert_couch_error(status, answer, 400, "bad_request")
    for query in ("limit=18446744073709551616", "heartbeat=99999999999999999999999", "timeout=-5"):
        status, answer, _ = await gw.call("GET", f"/{medic}/_changes?{query}", auth=CHW1)
        assert_couch_error(status, answer, 400, "bad_request")


async def test_a_deep_doc_stored_upstream_is_served(gw: Gateway, medic: str, backend: PouchServer) -> None:
    """A doc nested deeper than couchgate accepts, written straight into CouchDB, still
    reaches the users who may read it (couchgate writes deep JSON without orjson)."""
    doc = {**report("r_deep_up", MINE, patient_uuid="p1"), "deep": 0}
    raw = orjson.dumps(doc).replace(b'"deep":0', b'"deep":' + b"[" * 300 + b"1" + b"]" * 300)
    status, _ = await asyncio.to_thread(backend.request, "PUT", f"/{medic}/r_deep_up", orjson.loads(raw))
    assert status == 201
    status, body, _ = await gw.call("GET", f"/{medic}/r_deep_up", auth=CHW1)
    assert status == 200 and body["_id"] == "r_deep_up"
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?include_docs=true", auth=CHW1)
    assert status == 200 and any(r["id"] == "r_deep_up" for r in feed["results"])


async def test_the_tree_still_decides(gw: Gateway, medic: str, backend: PouchServer) -> None:
    """The baseline the attacks above are measured against: a place put into area1 by a
    trusted writer is chw1's and not chw2's."""
    put(backend, medic, place("house_x", "clinic", "area1", "hc1", "district1"))
    assert await reads(gw, medic, CHW1, "house_x") and not await reads(gw, medic, CHW2, "house_x")


# -- found by the black-box attack on the first fix (docs/security.md) --------------------------


async def test_orphans_are_not_adopted_by_creating_what_they_name(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A foreign doc names a contact that does not exist yet (a parent, an owner, a
    subject): creating a contact with that id in one's own area does not take it."""
    put(backend, medic, {**person("orphan_p", "house3", "area3"), "parent": {"_id": "ghost_hh"}})
    put(backend, medic, report("orphan_r", ("p3", "house2", "area2"), patient_uuid="orphan_p"))
    put(backend, medic, {"_id": "orphan_t", "type": "target", "owner": "ghost_owner", "secret": 1})
    put(backend, medic, report("orphan_s", ("p3", "house2"), patient_uuid="ghost_subject"))
    for ghost in ("ghost_hh", "ghost_owner", "ghost_subject"):
        body = place(ghost, "clinic", "area1", "hc1", "district1")
        status, answer, _ = await gw.call("PUT", f"/{medic}/{ghost}", auth=CHW1, json=body)
        assert_couch_error(status, answer, 403, "forbidden")  # W10
        assert backend.request("GET", f"/{medic}/{ghost}")[0] == 404
    for victim in ("orphan_p", "orphan_r", "orphan_t", "orphan_s"):
        assert not await reads(gw, medic, CHW1, victim)


async def test_moving_own_contacts_up_reveals_nothing_the_depths_hide(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """chw's depth is 2 (area1 0, house1 1, p1 2): a contact below p1 and reports kept from
    them by a `report_depth` stay hidden when they move their own people up."""
    put(backend, medic, person("grandchild", "p1", "house1", "area1"))  # depth 3: outside
    settings = doc_of(backend, medic, "settings")
    settings["settings"]["replication_depth"] = [{"role": "chw", "depth": 2, "report_depth": 1}]
    put(backend, medic, settings)
    put(backend, medic, report("r_deep", ("p3", "house2", "area2"), patient_uuid="p2"))  # p2 at 2 > 1
    assert not await reads(gw, medic, CHW1, "grandchild") and not await reads(gw, medic, CHW1, "r_deep")
    for doc_id in ("p1", "p2"):
        up = {**doc_of(backend, medic, doc_id), "parent": lineage("area1", "hc1", "district1")}
        status, body, _ = await gw.call("PUT", f"/{medic}/{doc_id}", auth=CHW1, json=up)
        assert_couch_error(status, body, 403, "forbidden")
    assert not await reads(gw, medic, CHW1, "grandchild") and not await reads(gw, medic, CHW1, "r_deep")
    # A move that reveals nothing is a move like any other.
    sideways = {**doc_of(backend, medic, "p1"), "parent": lineage("house1", "area1")}
    put(backend, medic, {**doc_of(backend, medic, "grandchild"), "_deleted": True})
    status, body, _ = await gw.call("PUT", f"/{medic}/p1", auth=CHW1, json=sideways)
    assert status == 201, body


async def test_a_conflict_leaf_another_area_made_breaks_nobodys_sync(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A doc with a conflicting revision placed outside a user's scope: the user is never
    told of that leaf (a revision PouchDB cannot fetch stops its whole pull), and a real
    PouchDB pull completes."""
    from e2e_support import run_pouch

    hh = doc_of(backend, medic, "house1")
    base = hh["_rev"]
    stay = {**hh, "_rev": "2-" + "f" * 32, "_revisions": {"start": 2, "ids": ["f" * 32, base.split("-")[1]]}}
    away = {**hh, "parent": lineage("area2", "hc1"), "name": "moved by someone else",
            "_rev": "2-" + "0" * 32, "_revisions": {"start": 2, "ids": ["0" * 32, base.split("-")[1]]}}  # fmt: skip
    status, body = backend.request("POST", f"/{medic}/_bulk_docs", {"docs": [stay, away], "new_edits": False})
    assert status == 201, body
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?style=all_docs", auth=CHW1)
    row = next(r for r in feed["results"] if r["id"] == "house1")
    assert [c["rev"] for c in row["changes"]] == [stay["_rev"]]
    for path in ("house1?conflicts=true", "house1?open_revs=all", "house1?meta=true"):
        status, got, _ = await gw.call("GET", f"/{medic}/{path}", auth=CHW1)
        assert status == 200 and away["_rev"] not in orjson.dumps(got).decode(), got
    status, diff, _ = await gw.call(
        "POST", f"/{medic}/_revs_diff", auth=CHW1, json={"house1": [away["_rev"]]}
    )
    assert diff == {"house1": {"missing": [away["_rev"]]}}
    pulled = await run_pouch(
        {"op": "pull_push", "url": f"{gw.url}/{medic}", "auth": {"basic": ["chw1", "pw-chw1"]}}
    )
    assert "house1" in pulled["ids"]
    # chw2 sees the leaf in their area, and only that one.
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?style=all_docs", auth=CHW2)
    assert not any(r["id"] == "house1" and stay["_rev"] in str(r) for r in feed["results"])


async def test_malformed_revision_paths_never_reach_the_backend(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    doc = person("p_rev", "house1", "area1", "hc1", "district1")
    for extra in ({"_rev": "1-abc", "_revisions": {"start": 1, "ids": []}},
                  {"_rev": "1-"}, {"_rev": "0-abc"}, {"_rev": "-1-abc"},
                  {"_rev": "2-abc", "_revisions": {"start": 2, "ids": ["xyz", "abc"]}},
                  {"_rev": "1-abc", "_revisions": {"start": "1", "ids": ["abc"]}},
                  {"_rev": "1-abc", "_revisions": {"start": 1, "ids": ["abc", "def"]}}, {}):  # fmt: skip
        status, body, _ = await gw.call(
            "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [{**doc, **extra}], "new_edits": False}
        )
        if status == 201:  # refused as a doc CouchDB would refuse: a row of its own
            assert len(body) == 1 and body[0]["error"] in ("bad_request", "doc_validation"), body
        else:
            assert_couch_error(status, body, 400, "bad_request")
    assert backend.request("GET", "/")[0] == 200
    assert backend.request("GET", f"/{medic}/p_rev")[0] == 404


async def test_an_attachment_stub_names_only_the_docs_own_attachment(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    import base64
    import hashlib

    secret = b"HIV-POSITIVE result for p3"
    digest = "md5-" + base64.b64encode(hashlib.md5(secret).digest()).decode()
    p3 = doc_of(backend, medic, "p3")
    put(backend, medic, {**p3, "_attachments": {"lab.txt": {"content_type": "text/plain",
                                                            "data": base64.b64encode(secret).decode()}}})  # fmt: skip
    steal = {**person("p_steal", "house1", "area1", "hc1", "district1"),
             "_attachments": {"lab.txt": {"stub": True, "digest": digest, "content_type": "text/plain"}}}  # fmt: skip
    status, body, _ = await gw.call("PUT", f"/{medic}/p_steal", auth=CHW1, json=steal)
    assert (status, body["error"]) == (412, "missing_stub"), body
    wrong = {**steal, "_attachments": {"lab.txt": {"stub": True, "digest": "md5-AAAA", "content_type": "x"}}}
    status, other, _ = await gw.call("PUT", f"/{medic}/p_steal", auth=CHW1, json=wrong)
    assert (status, other) == (412, body)  # a wrong digest answers the same: no oracle on content

    status, rows, _ = await gw.call(
        "POST",
        f"/{medic}/_bulk_docs",
        auth=CHW1,
        json={"docs": [{**steal, "_rev": "1-abc"}], "new_edits": False},
    )
    assert status == 201 and rows[0]["error"] == "forbidden", rows
    assert backend.request("GET", f"/{medic}/p_steal")[0] == 404


async def test_a_report_carries_only_its_submitters_lineage(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    forged = report("r_lineage", ("chw1_person", "area2", "hc1"), patient_uuid="p1")  # no needs_signoff
    status, body, _ = await gw.call("PUT", f"/{medic}/r_lineage", auth=CHW1, json=forged)
    assert_couch_error(status, body, 403, "forbidden")
    honest = report("r_lineage", MINE, patient_uuid="p1")
    status, body, _ = await gw.call("PUT", f"/{medic}/r_lineage", auth=CHW1, json=honest)
    assert status == 201, body


async def test_a_bulk_get_naming_a_doc_twice_answers_twice(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get", auth=CHW1, json={"docs": [{"id": "p1"}, {"id": "p9"}, {"id": "p1"}]}
    )
    assert status == 200 and [r["id"] for r in body["results"]] == ["p1", "p9", "p1"]
    assert body["results"][0] == body["results"][2] and "ok" in body["results"][0]["docs"][0]


async def test_since_tokens_tell_nothing_of_other_users_writes(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A token once carried the index's ordinal in clear: a user could count every write in
    the database. Tokens are sealed: nothing in them reads, and each one is new."""
    import base64

    _, first, _ = await gw.call("GET", f"/{medic}", auth=CHW1)
    put(backend, medic, report("r_elsewhere", ("p9", "house3"), patient_uuid="p9"))
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?since={first['update_seq']}", auth=CHW1)
    assert status == 200 and feed["results"] == []
    for token in (first["update_seq"], feed["last_seq"]):
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert b'"o":' not in raw and b"chw1" not in raw
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    _, again, _ = await gw.call("GET", f"/{medic}", auth=CHW1)
    assert again["update_seq"] != first["update_seq"]  # fresh every time, whatever changed


@pytest.mark.parametrize(
    "extra",
    [{"_attachments": {"a": {"data": 5}}}, {"_attachments": {"a": "x"}}, {"_attachments": {"a": {"data": None}}},
     {"_attachments": {"a": {"stub": "yes"}}}, {"_attachments": {"a": {"data": "aGk=", "content_type": 5}}},
     {"_attachments": []}, {"_deleted": "yes"}, {"_deleted": 1}],
)  # fmt: skip
async def test_malformed_special_fields_never_reach_the_backend(
    gw: Gateway, medic: str, backend: PouchServer, extra: dict[str, Any]
) -> None:
    """Found by the second attack round: `_attachments` of the wrong shapes killed
    pouchdb-server (one request took it down for everyone), and a truthy `_deleted` that
    is not `true` would delete on pouchdb-server without the delete permission."""
    doc = {**person("p_shape", "house1", "area1", "hc1", "district1"), **extra}
    for method, path, body in (
        ("POST", f"/{medic}/_bulk_docs", {"docs": [doc]}),
        ("PUT", f"/{medic}/p_shape", doc),
        ("POST", f"/{medic}", doc),
    ):
        status, answer, _ = await gw.call(method, path, auth=CHW1, json=body)
        assert status < 500, (method, answer)
        if status == 201 and method == "POST" and path.endswith("_bulk_docs"):
            assert "error" in answer[0], answer
        else:
            assert status == 400, (method, status, answer)
    assert backend.request("GET", "/")[0] == 200
    assert backend.request("GET", f"/{medic}/p_shape")[0] == 404


# -- found by the third attack round ------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain\r\nX-Evil: 1", "a\x00b", "x" * 300])
async def test_an_attachment_another_user_cannot_read_is_never_stored(
    gw: Gateway, medic: str, backend: PouchServer, content_type: str | None
) -> None:
    """An attachment without a (valid) content type was stored, and every read of it failed
    on pouchdb-server: the supervisor's PouchDB pull stopped there, for good. Missing, it
    gets CouchDB's default; malformed, it is refused."""
    att: dict[str, Any] = {"data": "aGVsbG8="}
    if content_type is not None:
        att["content_type"] = content_type
    doc = {**person("p_att", "house1", "area1", "hc1", "district1"), "_attachments": {"a": att}}
    status, rows, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [doc]})
    if content_type is None:
        assert status == 201 and rows[0].get("ok"), rows
        status, _, headers = await gw.call("GET", f"/{medic}/p_att/a", auth=SUP)
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    else:
        assert status == 201 and rows[0]["error"] in ("bad_request", "doc_validation"), rows
        assert backend.request("GET", f"/{medic}/p_att")[0] == 404


async def test_attachments_never_run_as_pages_of_couchgate(gw: Gateway, medic: str) -> None:
    page = {"content_type": "text/html", "data": "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}
    doc = {**person("p_html", "house1", "area1", "hc1", "district1"), "_attachments": {"x.html": page}}
    status, body, _ = await gw.call("PUT", f"/{medic}/p_html", auth=CHW1, json=doc)
    assert status == 201, body
    admin = "Basic " + __import__("base64").b64encode(b"admin:pass").decode()
    for who in (SUP, admin):
        status, _, headers = await gw.call("GET", f"/{medic}/p_html/x.html", auth=who)
        assert status == 200 and headers["Content-Security-Policy"] == "sandbox"
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_offline_users_local_docs_are_nobody_elses(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """An online member computed chw1's checkpoint id (an unkeyed hash of the name) and read,
    overwrote and deleted it. The ids are keyed now, and no caller but an admin reaches
    couchgate's own `_local` docs, nor lists `_local` docs at all."""
    import hashlib

    status, _, _ = await gw.call("PUT", f"/{medic}/_local/cp", auth=CHW1, json={"last_seq": "mine"})
    assert status == 201
    clerk = auth("clerk")
    guessed = f"_local/couchgate~{hashlib.sha256(b'chw1').hexdigest()[:24]}~cp"
    assert backend.request("GET", f"/{medic}/{guessed}")[0] == 404  # the old unkeyed id is gone
    status, listed = backend.request("GET", f"/{medic}/_local/cp")
    assert status == 404, listed  # nothing un-namespaced either
    for method, path, json, headers in (
        ("GET", f"/{medic}/{guessed}", None, None),
        ("PUT", f"/{medic}/{guessed}", {"last_seq": "clobbered"}, None),
        ("DELETE", f"/{medic}/{guessed}?rev=0-1", None, None),
        ("GET", f"/{medic}/_local_docs", None, None),
        ("COPY", f"/{medic}/p1", None, {"Destination": guessed}),
        ("GET", f"/{medic}/_local/couchgate-ledger~x", None, None),
    ):
        status, body, _ = await gw.call(method, path, auth=clerk, json=json, headers=headers)
        assert_couch_error(status, body, 403, "forbidden")
    status, mine, _ = await gw.call("GET", f"/{medic}/_local/cp", auth=CHW1)
    assert status == 200 and mine["last_seq"] == "mine"
