"""POST /import against the real backend: shapes, conflict modes, per-doc results, rules."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from import_support import couchgate_process, do_import, peak_rss_kb, statuses

from proxy.devserver.backend import PouchServer
from proxy.importer import pipeline

from offline_data import auth as offline_auth
from offline_data import person, place, report
from support import Gateway, TestUser, assert_couch_error, eventually


async def test_every_input_shape(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    shapes = {
        "array": [{"_id": "a1", "v": 1}],
        "docs": {"docs": [{"_id": "d1", "v": 1}]},
        "rows": {
            "total_rows": 1,
            "rows": [{"id": "r1", "key": "r1", "value": {"rev": "7-x"}, "doc": {"_id": "r1", "_rev": "7-x"}}],
        },
        "mixed": [
            {"id": "m1", "key": "m1", "value": {"rev": "2-y"}, "doc": {"_id": "m1", "_rev": "2-y"}},
            {"_id": "m2"},
            {"doc": {"_id": "m3"}},
        ],
    }
    for name, payload in shapes.items():
        answer = await do_import(gateway, path, alice, payload)
        assert all(r["status"] == "created" for r in answer["results"]), (name, answer)
    answer = await do_import(gateway, path, alice, [{"_id": "n1"}, {"_id": "n2"}], ndjson=True)
    assert statuses(answer) == [("n1", "created"), ("n2", "created")] and answer["summary"] == {"created": 2}
    _status, doc, _ = await gateway.call("GET", f"/{db}/r1", auth=alice)
    assert doc["_rev"].startswith("1-")  # the export's _rev was never sent upstream


async def test_edge_shapes_a_doc_with_rows_and_rows_without_docs(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    # A top-level object with an _id is one doc, whatever fields it has.
    one = {"_id": "form-with-rows", "type": "thing", "rows": [{"a": 1}], "docs": [{"b": 2}]}
    assert statuses(await do_import(gateway, path, alice, one)) == [("form-with-rows", "created")]
    assert backend.request("GET", f"/{db}/form-with-rows")[1]["rows"] == [{"a": 1}]
    # `_all_docs?keys=` rows for ids the source did not have, and for deleted docs.
    export = {"rows": [
        {"key": "gone", "error": "not_found"},
        {"id": "del", "key": "del", "value": {"rev": "2-a", "deleted": True}, "doc": None},
        {"id": "kept", "key": "kept", "value": {"rev": "1-b"}, "doc": {"_id": "kept", "_rev": "1-b"}},
    ]}  # fmt: skip
    answer = await do_import(gateway, path, alice, export)
    assert statuses(answer) == [("gone", "invalid"), ("del", "invalid"), ("kept", "created")]
    assert "not found in the export" in answer["results"][0]["reason"]
    assert "deleted" in answer["results"][1]["reason"]
    assert backend.request("GET", f"/{db}/gone")[0] == backend.request("GET", f"/{db}/del")[0] == 404


async def test_nested_ids_are_untouched_and_ids_are_generated_deterministically(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    doc = {
        "type": "data_record",
        "fields": {"inputs": {"contact": {"_id": "p1", "_rev": "3-z"}}},
        "contact": {"_id": "chw"},
    }
    first = await do_import(gateway, f"/{db}/_couchgate/import", alice, [doc, doc])
    again = await do_import(gateway, f"/{db}/_couchgate/import", alice, [doc, doc])
    ids = [r["id"] for r in first["results"]]
    assert len(set(ids)) == 2 and [r["id"] for r in again["results"]] == ids
    assert [r["status"] for r in again["results"]] == ["unchanged", "unchanged"]
    _, stored, _ = await gateway.call("GET", f"/{db}/{ids[0]}", auth=alice)
    assert stored["fields"]["inputs"]["contact"] == {"_id": "p1", "_rev": "3-z"} and stored["contact"] == {
        "_id": "chw"
    }


async def test_conflict_modes_and_reimport(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    await do_import(gateway, path, alice, [{"_id": "x", "v": 1}, {"_id": "same", "v": 1}])
    changed = [{"_id": "x", "v": 2, "_rev": "9-bogus"}, {"_id": "same", "v": 1, "_rev": "5-other"}]
    skip = await do_import(gateway, path, alice, changed)
    assert statuses(skip) == [("x", "skipped"), ("same", "unchanged")]
    over = await do_import(gateway, path, alice, changed, "?on_conflict=overwrite")
    assert statuses(over) == [("x", "updated"), ("same", "unchanged")]
    assert backend.request("GET", f"/{db}/x")[1]["v"] == 2
    both = await do_import(gateway, path, alice, [{"_id": "x", "v": 3}], "?on_conflict=keep_both")
    assert statuses(both) == [("x", "conflict")] and both["results"][0]["rev"].startswith("1-")
    _, leaves = backend.request("GET", f"/{db}/x?conflicts=true")
    assert leaves["v"] == 2 and leaves["_conflicts"] == [both["results"][0]["rev"]]
    again = await do_import(gateway, path, alice, [{"_id": "x", "v": 3}], "?on_conflict=keep_both")
    assert again["results"][0]["rev"] == both["results"][0]["rev"]
    assert (
        backend.request("GET", f"/{db}/x?conflicts=true")[1]["_conflicts"] == leaves["_conflicts"]
    )  # no second branch
    status, body, _ = await gateway.call("POST", f"{path}?on_conflict=merge", auth=alice, json=[])
    assert_couch_error(status, body, 400, "bad_request")


async def test_keep_both_never_replaces_the_visible_version(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    """A stored first revision sorts above or below a first-revision branch by its hash: with
    a dozen stored docs at generation 1, a branch that could win would show up."""
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    originals = [{"_id": f"k{i:02d}", "v": "original", "n": i} for i in range(12)]
    await do_import(gateway, path, alice, originals)
    # A stored winner whose rev sorts below any branch: it is moved to a second revision first.
    lowest = {"_id": "k-low", "_rev": "1-" + "0" * 32, "v": "original"}
    assert backend.request("POST", f"/{db}/_bulk_docs", {"docs": [lowest], "new_edits": False})[0] == 201
    imported = [{**d, "v": "imported"} for d in [*originals, {"_id": "k-low"}]]
    answer = await do_import(gateway, path, alice, imported, "?on_conflict=keep_both")
    assert {status for _, status in statuses(answer)} == {"conflict"}
    for row in answer["results"]:
        _, doc = backend.request("GET", f"/{db}/{row['id']}?conflicts=true")
        assert doc["v"] == "original" and doc["_conflicts"] == [row["rev"]], (row, doc)
    assert backend.request("GET", f"/{db}/k-low")[1]["_rev"].startswith("2-")
    again = await do_import(gateway, path, alice, imported, "?on_conflict=keep_both")
    assert [r["rev"] for r in again["results"]] == [r["rev"] for r in answer["results"]]
    assert backend.request("GET", f"/{db}/k-low?conflicts=true")[1]["_conflicts"] == [
        answer["results"][-1]["rev"]
    ]


async def test_overwrite_lands_on_top_of_a_concurrent_update(
    gateway: Gateway,
    db: str,
    users: dict[str, TestUser],
    backend: PouchServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone else writes the doc between the import's read and its write: the import
    reads again and its body becomes the winner on top of that newer revision."""
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    await do_import(gateway, path, alice, [{"_id": "busy", "v": 1}])
    read = pipeline.Importer._stored
    concurrent: list[str] = []

    async def read_then_someone_writes(self: pipeline.Importer, ids: list[str]) -> Any:
        found, deleted = await read(self, ids)
        if not concurrent and found.get("busy"):
            status, body = await asyncio.to_thread(
                backend.request, "PUT", f"/{db}/busy", {"_rev": found["busy"]["_rev"], "v": "theirs"}
            )
            assert status == 201, body
            concurrent.append(body["rev"])
        return found, deleted

    monkeypatch.setattr(pipeline.Importer, "_stored", read_then_someone_writes)
    answer = await do_import(gateway, path, alice, [{"_id": "busy", "v": "ours"}], "?on_conflict=overwrite")
    assert statuses(answer) == [("busy", "updated")] and concurrent
    _, doc = backend.request("GET", f"/{db}/busy?conflicts=true&revs=true")
    assert doc["v"] == "ours" and "_conflicts" not in doc
    assert doc["_rev"] == answer["results"][0]["rev"] and doc["_rev"].startswith("3-")
    assert doc["_revisions"]["ids"][1] == concurrent[0].split("-", 1)[1]  # on top of theirs


async def test_mixed_payload_and_dry_run(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    await do_import(gateway, path, alice, [{"_id": "old", "v": 1}, {"_id": "twin", "v": 1}])
    payload = [
        {"_id": "new"}, {"_id": "old", "v": 2}, {"_id": "twin", "v": 1}, "not a doc", {"_id": "_local/cp"},
        {"_id": "_design/app"}, {"_id": "_odd"}, {"_id": "att", "_attachments": {"a": {"content_type": "text/plain", "data": "!!notbase64"}}},
        {"_id": "stub", "_attachments": {"a": {"stub": True}}}, {"_id": 7},
        {"v": 1, "_attachments": {"a": {"content_type": "text/plain", "data": "abc"}}},  # no _id, bad base64
        {"_id": "deep", "a": "DEEP"}, {"v": 2, "a": "DEEP"},  # deeper than JSON encoders go
        {"_id": "odd_field", "_secret": 1},  # CouchDB would refuse the whole _bulk_docs for it
    ]  # fmt: skip
    raw = orjson.dumps(payload).replace(b'"DEEP"', b"[" * 300 + b"1" + b"]" * 300)  # orjson won't write it
    # Only `true`/`false` decide whether anything is written: `dry_run=1` is refused, not a write.
    status, body, _ = await gateway.call("POST", f"{path}?dry_run=1", auth=alice, json=[{"_id": "new"}])
    assert_couch_error(status, body, 400, "bad_request")
    assert backend.request("GET", f"/{db}/new")[0] == 404
    dry = await do_import(gateway, path, alice, raw, "?dry_run=TRUE")
    assert [r["status"] for r in dry["results"]] == ["created", "skipped", "unchanged"] + ["invalid"] * 11
    assert all(r["reason"] for r in dry["results"][3:]) and dry["dry_run"] is True
    assert "base64" in dry["results"][10]["reason"] and "nested" in dry["results"][11]["reason"]
    assert backend.request("GET", f"/{db}/new")[0] == 404
    real = await do_import(gateway, path, alice, raw)
    assert [r["status"] for r in real["results"]] == [r["status"] for r in dry["results"]]
    assert [r["index"] for r in real["results"]] == list(range(len(payload)))
    assert real["summary"] == {"created": 1, "skipped": 1, "unchanged": 1, "invalid": 11}
    good = {
        "_id": "att2",
        "_attachments": {"a.txt": {"content_type": "text/plain", "data": base64.b64encode(b"hi").decode()}},
    }
    assert statuses(await do_import(gateway, path, alice, [good])) == [("att2", "created")]
    assert statuses(await do_import(gateway, path, alice, [good])) == [("att2", "unchanged")]


async def test_size_limit_counts_the_json_body_not_the_attachments(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    big = {"_id": "big", "text": "x" * 8_000_001}
    with_attachment = {"_id": "photo", "type": "person", "_attachments": {
        "scan.bin": {"content_type": "application/octet-stream", "data": base64.b64encode(os.urandom(9_000_000)).decode()}}}  # fmt: skip
    status, answer, _ = await gateway.call("POST", path, auth=alice, headers={"Content-Type": "application/json"},
                                           data=io.BytesIO(orjson.dumps([big, with_attachment, {"_id": "small"}])))  # fmt: skip
    assert status == 200, answer
    assert statuses(answer) == [("big", "invalid"), ("photo", "created"), ("small", "created")]
    assert "over the limit of 8000000" in answer["results"][0]["reason"]
    assert backend.request("GET", f"/{db}/big")[0] == 404
    _, stored = backend.request("GET", f"/{db}/photo")
    assert stored["_attachments"]["scan.bin"]["length"] == 9_000_000


async def test_not_json_is_400_and_bad_ndjson_lines_are_invalid(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call(
        "POST",
        f"/{db}/_couchgate/import",
        auth=alice,
        data=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/import", auth=alice, data=b'{"_id":"ok1"}\n{broken\n{"_id":"ok2"}\n',
                                         headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    lines = [orjson.loads(x) for x in body.splitlines()]
    assert [(r.get("id"), r.get("status")) for r in lines[:3]] == [
        ("ok1", "created"),
        (None, "invalid"),
        ("ok2", "created"),
    ]
    status, body, _ = await gateway.call(
        "POST", "/import", data=b"[]", headers={"Content-Type": "application/json"}
    )
    assert_couch_error(status, body, 401, "unauthorized")


async def test_offline_supervisor_imports_own_subtree_and_gets_forbidden_for_others(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    docs = [
        place("house_imp", "clinic", "area2", "hc1", "district1"),
        person("p_imp", "house_imp", "area2", "hc1", "district1"),
        report("r_imp", ("p_imp", "house_imp", "area2", "hc1"), patient_id="p_imp"),
        report("r_elsewhere", ("p9", "house3", "area3"), patient_uuid="p9"),
        {"_id": "settings", "settings": {}},
    ]
    answer = await do_import(gw, "/import", offline_auth("supervisor"), docs)
    assert statuses(answer) == [("house_imp", "created"), ("p_imp", "created"), ("r_imp", "created"),
                                ("r_elsewhere", "forbidden"), ("settings", "forbidden")]  # fmt: skip
    assert all(r["reason"] for r in answer["results"][3:])
    assert backend.request("GET", f"/{medic}/r_elsewhere")[0] == 404
    status, body, _ = await gw.call(
        "POST", "/other-db/_couchgate/import", auth=offline_auth("supervisor"), json=[]
    )
    assert_couch_error(status, body, 403, "forbidden")


async def test_concurrent_overlapping_imports(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"_id": f"c{i:03d}", "v": i} for i in range(300)]
    answers = await asyncio.gather(
        *(
            do_import(gateway, path, alice, docs[k * 100 : k * 100 + 200], "?on_conflict=overwrite")
            for k in range(2)
        )
    )
    for answer in answers:
        assert {r["status"] for r in answer["results"]} <= {"created", "unchanged", "updated"}, answer
    _, all_docs = backend.request("GET", f"/{db}/_all_docs")
    assert [r["id"] for r in all_docs["rows"]] == [d["_id"] for d in docs]
    _, one = backend.request("GET", f"/{db}/c150?conflicts=true")
    assert "_conflicts" not in one and one["v"] == 150


async def test_retry_after_the_connection_is_cut(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"type": "data_record", "n": i} for i in range(2000)]  # no _ids: the deterministic ones matter
    lines = b"".join(orjson.dumps(d) + b"\n" for d in docs)

    cut = asyncio.Event()

    async def cut_body() -> AsyncIterator[bytes]:
        yield lines[: len(lines) // 2]
        await cut.wait()  # the rest never leaves

    async def part_written() -> bool:
        return (await asyncio.to_thread(backend.request, "GET", f"/{db}"))[1]["doc_count"] >= 500

    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + path, data=cut_body(),
                             headers={"Authorization": alice, "Content-Type": "application/x-ndjson"}) as resp:  # fmt: skip
            assert await eventually(part_written)  # the cut comes after part of the import is in
            resp.close()  # cable pulled
        cut.set()
    await asyncio.sleep(0.5)
    answer = await do_import(gateway, path, alice, docs, ndjson=True)
    assert sum(answer["summary"].values()) == 2000 and set(answer["summary"]) == {"created", "unchanged"}
    assert answer["summary"]["unchanged"] >= 500, answer["summary"]  # what got in before the cut
    _, info = backend.request("GET", f"/{db}")
    assert info["doc_count"] == 2000
    final = await do_import(gateway, path, alice, docs, ndjson=True)
    assert final["summary"] == {"unchanged": 2000}


async def test_ndjson_import_memory_is_flat_in_the_input_size(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    """Peak RSS of a couchgate process (audit off; its scope index follows another
    database, so only the import can grow it) importing 3,000 and then 30,000 docs of
    ~2 KB: 6 MB and 60 MB of NDJSON. Holding the input, its parsed docs or the rows would
    add tens of MB for the larger one; streaming adds nothing past the first chunks."""
    backend.request("PUT", "/unrelated-mem")
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"

    async def run(url: str, n: int, prefix: str) -> None:
        async def body() -> AsyncIterator[bytes]:
            for start in range(0, n, 500):
                yield b"".join(orjson.dumps({"_id": f"{prefix}{i:06d}", "type": "person", "name": "x" * 2000}) + b"\n"
                               for i in range(start, min(n, start + 500)))  # fmt: skip

        created = 0
        async with aiohttp.ClientSession() as http, http.post(url + path, data=body(),
                headers={"Authorization": alice, "Content-Type": "application/x-ndjson"}) as resp:  # fmt: skip
            async for line in resp.content:
                created += b'"status":"created"' in line
        assert created == n

    try:
        async with couchgate_process(backend, "unrelated-mem", COUCHGATE_AUDIT_ENABLED="false") as (
            url,
            proc,
        ):
            await run(url, 1000, "w")  # warm up: imports, pools, caches
            await run(url, 3000, "s")
            small = peak_rss_kb(proc.pid)
            await run(url, 30000, "l")
            large = peak_rss_kb(proc.pid)
    finally:
        backend.request("DELETE", "/unrelated-mem")
    assert large - small < 12 * 1024, (small, large)  # ten times the input, the same peak (within 12 MB)


@pytest.mark.parametrize("mode", ["skip", "overwrite", "keep_both"])
async def test_reimport_of_integral_floats_is_a_no_op(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer, mode: str
) -> None:
    """`38.0` is stored as `38` by the embedded backend (as JavaScript has it): the same data
    imported again is `unchanged`, adds no revision and no conflict branch, whatever the mode."""
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"_id": f"w{i}", "weight": 38.0, "temp": -0.0, "nested": {"h": [1.0, 2.5]}} for i in range(3)]
    first = await do_import(gateway, path, alice, docs, f"?on_conflict={mode}")
    assert {s for _, s in statuses(first)} == {"created"}
    revs = {d["_id"]: backend.request("GET", f"/{db}/{d['_id']}")[1]["_rev"] for d in docs}
    again = await do_import(gateway, path, alice, docs, f"?on_conflict={mode}")
    assert statuses(again) == [(d["_id"], "unchanged") for d in docs]
    for doc in docs:
        _, stored = backend.request("GET", f"/{db}/{doc['_id']}?conflicts=true")
        assert stored["_rev"] == revs[doc["_id"]] and "_conflicts" not in stored, stored
    changed = await do_import(gateway, path, alice, [{**docs[0], "weight": 38.5}], f"?on_conflict={mode}")
    assert statuses(changed) != [("w0", "unchanged")]  # a real change is still seen
