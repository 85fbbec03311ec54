"""`proxy.couch.docs` against the real test backend: what each read answers on both
backends' shapes (pouchdb-server and CouchDB tell a missing or deleted doc apart in
`_bulk_get` differently), and its one failure policy (a fault a healthy server will not
show is injected into the real answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.couch.client import CouchClient, JsonResult, new_session
from proxy.couch.docs import Docs, ReadFailed
from proxy.devserver.backend import Backend

from support import ON_COUCHDB, gateway_settings


def write(backend: Backend, db: str, *docs: dict[str, Any]) -> None:
    status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": list(docs), "new_edits": False})
    assert status == 201 and body == [], body


def leaf(doc_id: str, revs: list[str], **fields: Any) -> dict[str, Any]:
    start = int(revs[0].split("-")[0])
    return {"_id": doc_id, "_rev": revs[0], "_revisions": {"start": start, "ids": [r.split("-")[1] for r in revs]},
            **fields}  # fmt: skip


@pytest.fixture
async def docs(backend: Backend, db: str) -> AsyncIterator[Docs]:
    """`live`, `dead` (deleted), `split` (two live leaves: 2-bbb wins over 2-aaa), `a` and
    `b`; `nope` is missing and `_nope` an id CouchDB cannot hold."""
    write(
        backend, db,
        leaf("live", ["1-aaa"], v=1), leaf("dead", ["1-aaa"], v=1), leaf("dead", ["2-ddd", "1-aaa"], _deleted=True),
        leaf("split", ["1-aaa"], v=1), leaf("split", ["2-aaa", "1-aaa"], v=2), leaf("split", ["2-bbb", "1-aaa"], v=3),
        leaf("a", ["1-aaa"], v=1), leaf("b", ["1-bbb"], v=1),
    )  # fmt: skip
    settings = gateway_settings(backend, db)
    session = new_session(settings)
    try:
        yield Docs(CouchClient(session, settings), "/" + db)
    finally:
        await session.close()


def counted(docs: Docs, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests `docs` makes from now on."""
    seen: list[str] = []
    real = docs.couch.json

    async def count(method: str, path: str, **kwargs: Any) -> JsonResult:
        seen.append(path.rsplit("/", 1)[-1])
        return await real(method, path, **kwargs)

    monkeypatch.setattr(docs.couch, "json", count)
    return seen


IDS = ["live", "dead", "split", "nope", "_nope"]


@pytest.mark.parametrize("bulk_get", [False, True])
async def test_winners_live_deleted_and_missing_alike_on_both_reads(docs: Docs, bulk_get: bool) -> None:
    found = await docs.winners([*IDS, "live"], bulk_get=bulk_get)
    assert {k: (d["_rev"], d["v"]) for k, d in found.live.items()} == {
        "live": ("1-aaa", 1),
        "split": ("2-bbb", 3),
    }
    assert found.deleted == {"dead": "2-ddd"}
    with_conflicts = await docs.winners(["split"], conflicts=True)
    assert with_conflicts.live["split"]["_conflicts"] == ["2-aaa"]


async def test_winners_by_bulk_get_cost_one_read_where_it_is_clear(
    docs: Docs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push path's speed-up: `_bulk_get` alone where its answer is clear; `_all_docs`
    only for what it leaves unclear (on CouchDB a doc with conflicts answers every leaf; on
    pouchdb-server a missing or deleted doc answers `{}`)."""
    seen = counted(docs, monkeypatch)
    await docs.winners(["live", "a"], bulk_get=True)
    assert seen == ["_bulk_get"]
    seen.clear()
    await docs.winners(["live", "split"], bulk_get=True)
    assert seen == (["_bulk_get", "_all_docs"] if ON_COUCHDB else ["_bulk_get"])
    seen.clear()
    await docs.winners(["dead", "nope", "_nope"], bulk_get=True)
    assert seen == (["_bulk_get"] if ON_COUCHDB else ["_bulk_get", "_all_docs"])
    seen.clear()
    assert await docs.winners([], bulk_get=True) == await docs.winners([])
    assert seen == []


async def test_revisions_matched_to_what_was_asked(docs: Docs) -> None:
    """pouchdb-server groups a `_bulk_get`'s rows by id; each answer still lands on its pair."""
    pairs = [("split", "2-aaa"), ("a", "1-aaa"), ("split", "2-bbb"), ("live", "9-zzz"), ("nope", "1-aaa"),
             ("dead", "2-ddd"), ("b", "1-bbb"), ("split", "2-aaa")]  # fmt: skip
    found = await docs.revisions(pairs, revs=True)
    assert list(found) == list(dict.fromkeys(pairs))
    assert found[("live", "9-zzz")] is None and found[("nope", "1-aaa")] is None
    shown = {pair: doc.get("v", "deleted") for pair, doc in found.items() if doc is not None}
    assert shown == {("split", "2-aaa"): 2, ("a", "1-aaa"): 1, ("split", "2-bbb"): 3, ("dead", "2-ddd"): "deleted",
                     ("b", "1-bbb"): 1}  # fmt: skip
    assert found[("split", "2-bbb")]["_revisions"] == {"start": 2, "ids": ["bbb", "aaa"]}


async def test_one_doc_its_leaves_revs_diff_and_a_scan(docs: Docs) -> None:
    assert (await docs.revision("split", "2-aaa") or {}).get("v") == 2
    assert await docs.revision("split", "9-zzz") is None
    assert await docs.revision("nope", "1-aaa") is None
    leaves = await docs.leaves("split")
    assert leaves is not None and sorted(leaf["_rev"] for leaf in leaves) == ["2-aaa", "2-bbb"]
    assert all("_revisions" in leaf for leaf in leaves)
    assert await docs.leaves("nope") is None
    rows = await docs.doc("split", {"open_revs": '["2-aaa","9-zzz"]'})
    assert rows == [{"ok": {"_id": "split", "_rev": "2-aaa", "v": 2}}, {"missing": "9-zzz"}]
    diff = await docs.revs_diff({"live": ["1-aaa", "9-zzz"], "nope": ["1-aaa"]})
    assert {doc_id: entry["missing"] for doc_id, entry in diff.items()} == {
        "live": ["9-zzz"],
        "nope": ["1-aaa"],
    }
    assert [d["_id"] async for d in docs.scan(page=1)] == ["a", "b", "live", "split"]
    assert [d["_id"] async for d in docs.scan("b", "m")] == ["b", "live"]


async def test_the_relayed_rows_are_couchdbs(docs: Docs) -> None:
    rows = await docs.all_docs_rows(["live", "dead", "nope"], {"include_docs": "true"})
    assert rows["nope"] == {"key": "nope", "error": "not_found"}
    assert rows["dead"]["value"] == {"rev": "2-ddd", "deleted": True}
    assert rows["live"]["doc"]["v"] == 1
    got = await docs.bulk_get_rows([{"id": "a", "rev": "1-aaa"}, {"id": "b"}, {"id": "a", "rev": "9-zzz"}])
    assert [row["id"] for row in got] == ["a", "b", "a"]
    assert got[0]["docs"] == [{"ok": {"_id": "a", "_rev": "1-aaa", "v": 1}}]


# -- the failure policy ---------------------------------------------------------------------

Fault = Callable[[JsonResult], JsonResult]
Read = Callable[[Docs], Awaitable[Any]]


def status(code: int) -> Fault:
    return lambda r: replace(r, status=code, body={"error": "unknown_error", "reason": "injected"})


def body(value: Any) -> Fault:
    return lambda r: replace(r, body=value)


def rows(change: Callable[[list[Any]], list[Any]]) -> Fault:
    def fault(r: JsonResult) -> JsonResult:
        name = "rows" if "rows" in r.body else "results"
        return replace(r, body={**r.body, name: change(list(r.body[name]))})

    return fault


def first_row(row: Callable[[Any], Any]) -> Fault:
    return rows(lambda found: [row(found[0]), *found[1:]])


ERROR = {"error": "unknown_error", "reason": "timeout"}
ROW_ERRORS: dict[str, Fault] = {
    "a row with another error": first_row(
        lambda row: {"key": row["key"], **ERROR} if "key" in row
        else {"id": row["id"], "docs": [{"error": {**ERROR, "id": row["id"], "rev": "undefined"}}]}
    ),
    "a row left out": rows(lambda found: found[1:]),
    "a row of a doc not asked for": first_row(
        lambda row: {**row, "key": "other", "id": "other"} if "key" in row else {**row, "id": "other"}
    ),
    "a row that is no row": first_row(lambda row: "row"),
}  # fmt: skip
FAULTS: dict[str, Fault] = {
    "500": status(500),
    "a refusal (401)": status(401),
    "404 for a database read": status(404),
    "no rows": body({"ok": True}),
    "not an object": body(["x"]),
}
READS: dict[str, tuple[Read, bool]] = {  # each read, and whether its answer has rows to spoil
    "winners": (lambda d: d.winners(["live", "dead", "nope"]), True),
    "winners by _bulk_get": (lambda d: d.winners(["live", "a"], bulk_get=True), True),
    "revisions": (lambda d: d.revisions([("live", "1-aaa"), ("a", "1-aaa")]), True),
    "all_docs_rows": (lambda d: d.all_docs_rows(["live", "nope"]), True),
    "bulk_get_rows": (lambda d: d.bulk_get_rows([{"id": "live"}, {"id": "a"}]), True),
    "scan": (lambda d: _all(d.scan()), True),
    "revs_diff": (lambda d: d.revs_diff({"live": ["9-zzz"]}), False),
    "leaves": (lambda d: d.leaves("split"), False),
    "doc": (lambda d: d.doc("live", {}), False),
}


async def _all(docs: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc async for doc in docs]


CASES = [
    pytest.param(read, fault, id=f"{read_name}: {fault_name}")
    for read_name, (read, has_rows) in READS.items()
    for fault_name, fault in (FAULTS | (ROW_ERRORS if has_rows else {})).items()
    if not (fault_name.startswith("404") and read_name in {"leaves", "doc"})  # there: "no such doc"
    and not (read_name == "scan" and fault_name in {"a row left out", "a row of a doc not asked for"})
]


@pytest.mark.parametrize(("read", "fault"), CASES)
async def test_every_read_fails_closed(
    docs: Docs, monkeypatch: pytest.MonkeyPatch, read: Read, fault: Fault
) -> None:
    await read(docs)  # healthy: it answers
    real = docs.couch.json

    async def spoilt(method: str, path: str, **kwargs: Any) -> JsonResult:
        return fault(await real(method, path, **kwargs))

    monkeypatch.setattr(docs.couch, "json", spoilt)
    with pytest.raises(ReadFailed) as failed:
        await read(docs)
    assert (failed.value.status, failed.value.error) == (502, "bad_gateway")
    assert failed.value.reason.startswith("CouchDB answered ")


async def test_a_row_that_says_no_such_doc_is_no_failure(docs: Docs, monkeypatch: pytest.MonkeyPatch) -> None:
    """pouchdb-server's shapes of "no such doc", and CouchDB's for an id it cannot hold, on
    either backend: missing, not failed."""
    real = docs.couch.json
    answers = iter([{}, {"missing": "1-aaa"}, {"error": {"id": "a", "rev": None, "error": "illegal_docid",
                                                         "reason": "Only reserved document ids may start with underscore."}}])  # fmt: skip

    async def shaped(method: str, path: str, **kwargs: Any) -> JsonResult:
        result = await real(method, path, **kwargs)
        return replace(result, body={"results": [{"id": "a", "docs": [next(answers)]}]})

    monkeypatch.setattr(docs.couch, "json", shaped)
    for _ in range(3):
        assert await docs.revisions([("a", "1-aaa")]) == {("a", "1-aaa"): None}
