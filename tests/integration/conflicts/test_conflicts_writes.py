"""Resolutions and splits when things move underneath them, deletions against edits, and
what a resolved doc looks like afterwards (real conflicts on the test backend)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from integration.conflicts.test_conflicts import admin, leaf, leaf_revs, make_concurrent, write

from proxy.conflicts.store import ConflictStore
from proxy.devserver.backend import PouchServer
from proxy.errors import UpstreamUnavailable

from support import Gateway, assert_couch_error

BASE = {"type": "data_record", "v": 1}


def fresh(prefix: str) -> str:
    # The audit log is shared by every test of the session: ids of this test's own.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def three_leaves(backend: PouchServer, db: str, doc_id: str) -> None:
    write(backend, db, leaf(doc_id, ["1-aaa"], **BASE))
    write(backend, db, leaf(doc_id, ["2-bbb", "1-aaa"], **BASE, b=1), leaf(doc_id, ["2-ccc", "1-aaa"], **BASE, c=1),
          leaf(doc_id, ["2-ddd", "1-aaa"], **BASE, d=1))  # fmt: skip


def race(monkeypatch: pytest.MonkeyPatch, when: str, move: Any) -> None:
    """Run `move` (a write straight to the backend) just before the resolver's write of
    the winner (`when="winner"`) or of the tombstones (`when="tombstones"`)."""
    real = ConflictStore.bulk

    async def racing(self: ConflictStore, docs: list[dict[str, Any]], *, new_edits: bool = True) -> Any:
        tombstones = all(doc.get("_deleted") for doc in docs)
        if tombstones == (when == "tombstones"):
            move()
        return await real(self, docs, new_edits=new_edits)

    monkeypatch.setattr(ConflictStore, "bulk", racing)


async def test_a_leaf_moving_before_the_tombstones_keeps_the_winner_and_says_what_was_written(
    gateway: Gateway, backend: PouchServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc_id = fresh("part")
    three_leaves(backend, db, doc_id)
    race(monkeypatch, "tombstones",
         lambda: write(backend, db, leaf(doc_id, ["3-zzz", "2-bbb", "1-aaa"], **BASE, b=2)))  # fmt: skip
    merged = {"type": "data_record", "v": 9}
    path = f"/{db}/_couchgate/conflicts/{doc_id}/resolve"
    status, body, _ = await gateway.call(
        "POST", path, auth=admin(backend), json={"strategy": "merge", "doc": merged}
    )
    assert_couch_error(status, body, 409, "conflict")
    # The winner went on top of CouchDB's winner (2-ddd); 2-ccc was deleted; 2-bbb had moved.
    assert [(w["kind"], w["on"]) for w in body["written"]] == [("winner", "2-ddd"), ("tombstone", "2-ccc")]
    assert body["refused"] == ["2-bbb"]
    leaves = leaf_revs(backend, db, doc_id)
    assert leaves[body["written"][0]["rev"]]["v"] == 9  # the merged body is not lost
    assert leaves[body["written"][1]["rev"]] | {"_revisions": None} == {
        "_id": doc_id, "_rev": body["written"][1]["rev"], "_deleted": True, "couchgate_resolved": True,
        "_revisions": None,
    }  # fmt: skip
    assert leaves["3-zzz"]["b"] == 2 and not leaves["3-zzz"].get("_deleted")
    status, audit, _ = await gateway.call(
        "GET", f"/_couchgate/audit?doc={doc_id}&action=resolve", auth=admin(backend)
    )
    assert status == 200
    assert sorted((e["outcome"], e.get("rev_after")) for e in audit["entries"]) == sorted(
        [("conflict", None), *(("written", w["rev"]) for w in body["written"])]
    )
    # Nothing moves any more: a second call finishes the job.
    monkeypatch.undo()
    status, body, _ = await gateway.call(
        "POST", path, auth=admin(backend), json={"strategy": "merge", "doc": merged}
    )
    assert status == 200, body
    _, doc = backend.request("GET", f"/{db}/{doc_id}?conflicts=true")
    assert "_conflicts" not in doc and doc["v"] == 9


async def test_couchdb_failing_after_the_winner_says_what_was_written(
    gateway: Gateway, backend: PouchServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB going away between the two writes (a fault a live server cannot be made to
    show on cue): the caller still learns that the winner was written."""
    doc_id = fresh("down")
    three_leaves(backend, db, doc_id)
    real = ConflictStore.bulk

    async def failing(self: ConflictStore, docs: list[dict[str, Any]], *, new_edits: bool = True) -> Any:
        if all(doc.get("_deleted") for doc in docs):
            raise UpstreamUnavailable("CouchDB is not reachable")
        return await real(self, docs, new_edits=new_edits)

    monkeypatch.setattr(ConflictStore, "bulk", failing)
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/{doc_id}/resolve",
                                         auth=admin(backend), json={"strategy": "pick", "rev": "2-bbb"})  # fmt: skip
    assert_couch_error(status, body, 503, "service_unavailable")
    assert [(w["kind"], w["on"]) for w in body["written"]] == [("winner", "2-bbb")]
    assert leaf_revs(backend, db, doc_id)[body["written"][0]["rev"]]["b"] == 1


async def test_a_winner_whose_leaf_moved_writes_nothing(
    gateway: Gateway, backend: PouchServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc_id = fresh("moved")
    three_leaves(backend, db, doc_id)
    race(monkeypatch, "winner",
         lambda: write(backend, db, leaf(doc_id, ["3-zzz", "2-ddd", "1-aaa"], **BASE, d=2)))  # fmt: skip
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/{doc_id}/resolve",
                                         auth=admin(backend), json={"strategy": "pick", "rev": "2-ddd"})  # fmt: skip
    assert_couch_error(status, body, 409, "conflict")
    assert "nothing was written" in body["reason"]
    leaves = leaf_revs(backend, db, doc_id)
    assert sorted(leaves) == ["2-bbb", "2-ccc", "3-zzz"] and not any(
        d.get("_deleted") for d in leaves.values()
    )


async def test_auto_refuses_a_deletion_against_an_edit(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    a = admin(backend)
    write(backend, db, leaf("dve", ["1-aaa"], type="person", v=1))
    write(
        backend,
        db,
        leaf("dve", ["2-bbb", "1-aaa"], type="person", v=2),
        leaf("dve", ["2-ccc", "1-aaa"], _deleted=True),
    )
    _, shown, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/dve", auth=a)
    assert shown["classification"] == "delete_vs_edit"
    path = f"/{db}/_couchgate/conflicts/dve/resolve"
    status, body, _ = await gateway.call("POST", path, auth=a, json={"strategy": "auto"})
    assert_couch_error(status, body, 409, "conflict")
    assert body["fields"] == [["_deleted"]]
    assert sorted(leaf_revs(backend, db, "dve")) == ["2-bbb", "2-ccc"]  # nothing written
    # A person picks the deletion: the edit is deleted, and so is the doc.
    status, body, _ = await gateway.call("POST", path, auth=a, json={"strategy": "pick", "rev": "2-ccc"})
    assert status == 200 and body["rev"] is None, body
    assert backend.request("GET", f"/{db}/dve")[0] == 404
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/dve", auth=a)
    assert_couch_error(status, body, 404, "not_found")


async def test_a_resolved_doc_is_not_a_conflict_any_more(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    a = admin(backend)
    make_concurrent(backend, db, "done")
    status, _, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/done/resolve", auth=a,
                                      json={"strategy": "auto"})  # fmt: skip
    assert status == 200
    assert len(leaf_revs(backend, db, "done")) == 2  # the winner and the marked tombstone
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/done", auth=a)
    assert_couch_error(status, body, 404, "not_found")
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/done/resolve", auth=a,
                                         json={"strategy": "auto"})  # fmt: skip
    assert_couch_error(status, body, 404, "not_found")


async def test_diff_against_the_winner_when_there_is_no_common_ancestor(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    write(
        backend, db, leaf("uc", ["1-p0"], type="person", name="Ann"), leaf("uc", ["1-r0"], type="data_record")
    )
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/uc", auth=admin(backend))
    assert status == 200 and body["classification"] == "uuid_collision"
    assert body["ancestor"] == {"rev": None, "available": False, "doc": None}
    assert body["winner"] == "1-r0"
    assert body["diffs"]["1-r0"] == {"against": "winner", "changes": []}
    assert body["diffs"]["1-p0"] == {"against": "winner", "changes": [
        {"path": ["name"], "op": "added", "after": "Ann"},
        {"path": ["type"], "op": "changed", "before": "data_record", "after": "person"},
    ]}  # fmt: skip


def collision_with_concurrent_person_edits(backend: PouchServer, db: str, doc_id: str, **edits: Any) -> None:
    """A person (first revision 1-p0, then edited on two devices: 2-pa, 2-pb) and a report
    (1-r0) that happen to share an id."""
    person = {"type": "person", "name": "Ann", "tags": ["a"]}
    write(backend, db, leaf(doc_id, ["1-p0"], **person))
    write(backend, db, leaf(doc_id, ["2-pa", "1-p0"], **{**person, **edits.get("pa", {})}),
          leaf(doc_id, ["2-pb", "1-p0"], **{**person, **edits.get("pb", {})}),
          leaf(doc_id, ["1-r0"], type="data_record", form="visit"))  # fmt: skip


async def test_split_carries_concurrent_edits_of_one_collided_doc_as_one_new_doc(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    collision_with_concurrent_person_edits(backend, db, "sx", pa={"tags": ["a", "b"]}, pb={"phone": "1"})
    path = f"/{db}/_couchgate/conflicts/sx/split"
    status, plan, _ = await gateway.call("POST", path, auth=admin(backend), json={})
    assert status == 200 and plan["dry_run"] is True
    groups = {g["type"]: g for g in plan["leaves"]}
    assert groups["person"]["revs"] == ["2-pa", "2-pb"] and groups["person"]["from"] == "merge"
    assert groups["data_record"]["revs"] == ["1-r0"]
    status, done, _ = await gateway.call("POST", path + "?dry_run=false", auth=admin(backend), json={})
    assert status == 200, done
    _, person = backend.request("GET", f"/{db}/{groups['person']['new_id']}")
    assert person["tags"] == ["a", "b"] and person["phone"] == "1"  # both edits carried
    assert backend.request("GET", f"/{db}/{groups['data_record']['new_id']}")[1]["form"] == "visit"
    assert all(d.get("_deleted") for d in leaf_revs(backend, db, "sx").values())


async def test_split_refuses_concurrent_edits_that_do_not_merge_until_one_is_kept(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    collision_with_concurrent_person_edits(backend, db, "sy", pa={"name": "Bea"}, pb={"name": "Cy"})
    path = f"/{db}/_couchgate/conflicts/sy/split?dry_run=false"
    status, body, _ = await gateway.call("POST", path, auth=admin(backend), json={})
    assert_couch_error(status, body, 409, "conflict")
    assert body["root"] == "1-p0" and body["leaves"] == ["2-pa", "2-pb"] and body["fields"] == [["name"]]
    leaves = leaf_revs(backend, db, "sy")
    assert sorted(leaves) == ["1-r0", "2-pa", "2-pb"] and not any(d.get("_deleted") for d in leaves.values())
    status, done, _ = await gateway.call("POST", path, auth=admin(backend), json={"keep": {"1-p0": "2-pb"}})
    assert status == 200, done
    person = next(g for g in done["leaves"] if g["type"] == "person")
    assert person["from"] == "keep" and backend.request("GET", f"/{db}/{person['new_id']}")[1]["name"] == "Cy"
    assert all(d.get("_deleted") for d in leaf_revs(backend, db, "sy").values())
