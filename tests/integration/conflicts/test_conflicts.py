"""Real conflicts on the test backend (made with new_edits:false), found, explained,
resolved and split through couchgate."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.devserver.backend import PouchServer

from support import Gateway, TestUser, assert_couch_error, basic


def admin(backend: PouchServer) -> str:
    return basic(backend.admin_user, backend.admin_password)


def leaf(doc_id: str, revs: list[str], **fields: Any) -> dict[str, Any]:
    """A leaf whose history is `revs`, newest first, e.g. ["2-b", "1-a"]."""
    start = int(revs[0].split("-")[0])
    return {
        "_id": doc_id,
        "_rev": revs[0],
        "_revisions": {"start": start, "ids": [r.split("-")[1] for r in revs]},
        **fields,
    }


def write(backend: PouchServer, db: str, *docs: dict[str, Any]) -> None:
    status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": list(docs), "new_edits": False})
    assert status == 201 and body == [], body


def make_concurrent(backend: PouchServer, db: str, doc_id: str = "shared") -> None:
    base = {"type": "data_record", "read": ["admin"], "v": 1, "note": "x"}
    write(backend, db, leaf(doc_id, ["1-aaa"], **base))
    write(backend, db, leaf(doc_id, ["2-bbb", "1-aaa"], **{**base, "read": ["admin", "some_user"]}))
    write(backend, db, leaf(doc_id, ["2-ccc", "1-aaa"], **{**base, "read": ["admin", "other_user"], "v": 2}))


def make_true_conflict(backend: PouchServer, db: str, doc_id: str) -> None:
    """`v` changed differently on both sides: auto refuses it."""
    write(backend, db, leaf(doc_id, ["1-aaa"], v=1, w=1))
    write(backend, db, leaf(doc_id, ["2-bbb", "1-aaa"], v=2, w=1), leaf(doc_id, ["2-ccc", "1-aaa"], v=3, w=1))


def leaf_revs(backend: PouchServer, db: str, doc_id: str) -> dict[str, dict[str, Any]]:
    """Every leaf of a doc upstream, by rev."""
    status, rows = backend.request("GET", f"/{db}/{doc_id}?open_revs=all&revs=true")
    assert status == 200, rows
    return {row["ok"]["_rev"]: row["ok"] for row in rows if "ok" in row}


async def get(gw: Gateway, backend: PouchServer, path: str) -> Any:
    status, body, _ = await gw.call("GET", path, auth=admin(backend))
    assert status == 200, body
    return body


async def test_list_and_classify_each_kind(gateway: Gateway, backend: PouchServer, db: str) -> None:
    make_concurrent(backend, db)
    write(
        backend,
        db,
        leaf("collide", ["1-p0"], type="person", name="Ann"),
        leaf("collide", ["1-r0"], type="data_record", form="visit"),
    )
    write(backend, db, leaf("gone", ["1-aaa"], type="person", v=1))
    # pouchdb-server's views do not see _deleted_conflicts (CouchDB's do), so this doc also
    # carries a live conflict to be listed here; one of its leaves is a user's deletion.
    edit, deletion = (
        leaf("gone", ["2-bbb", "1-aaa"], type="person", v=2),
        leaf("gone", ["2-ccc", "1-aaa"], _deleted=True),
    )
    write(backend, db, edit, deletion, leaf("gone", ["2-ddd", "1-aaa"], type="person", v=3))
    write(backend, db, leaf("calm", ["1-aaa"], type="person"))
    body = await get(gateway, backend, f"/{db}/_couchgate/conflicts")
    kinds = {c["id"]: c["classification"] for c in body["conflicts"]}
    assert kinds == {"shared": "concurrent_edit", "collide": "uuid_collision", "gone": "delete_vs_edit"}
    shared = next(c for c in body["conflicts"] if c["id"] == "shared")
    assert (
        shared["winner"] == "2-ccc" and shared["conflicts"] == ["2-bbb"] and shared["type"] == "data_record"
    )
    page = await get(gateway, backend, f"/{db}/_couchgate/conflicts?limit=2")
    rest = await get(gateway, backend, f"/{db}/_couchgate/conflicts?limit=2&next={page['next']}")
    assert [c["id"] for c in page["conflicts"] + rest["conflicts"]] == ["collide", "gone", "shared"]


async def test_show_gives_leaves_ancestor_and_diffs(gateway: Gateway, backend: PouchServer, db: str) -> None:
    make_concurrent(backend, db)
    body = await get(gateway, backend, f"/{db}/_couchgate/conflicts/shared")
    assert body["ancestor"]["rev"] == "1-aaa" and body["ancestor"]["available"] is True
    assert sorted(leaf["_rev"] for leaf in body["leaves"]) == ["2-bbb", "2-ccc"]
    assert body["diffs"]["2-bbb"] == {"against": "ancestor", "changes": [
        {"path": ["read"], "op": "changed", "before": ["admin"], "after": ["admin", "some_user"]}]}  # fmt: skip
    assert {tuple(c["path"]) for c in body["diffs"]["2-ccc"]["changes"]} == {("read",), ("v",)}


async def test_auto_unions_grown_arrays_and_combines_one_sided_changes(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    make_concurrent(backend, db)
    status, dry, _ = await gateway.call(
        "POST",
        f"/{db}/_couchgate/conflicts/shared/resolve?dry_run=true",
        auth=admin(backend),
        json={"strategy": "auto"},
    )
    assert status == 200 and dry["dry_run"] is True
    assert backend.request("GET", f"/{db}/shared?conflicts=true")[1]["_conflicts"] == [
        "2-bbb"
    ]  # nothing written
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/shared/resolve", auth=admin(backend), json={"strategy": "auto"}
    )
    assert status == 200, body
    _, doc = backend.request("GET", f"/{db}/shared?conflicts=true")
    assert "_conflicts" not in doc and doc["v"] == 2 and doc["read"] == ["admin", "some_user", "other_user"]
    listed = await get(gateway, backend, f"/{db}/_couchgate/conflicts")
    assert listed["conflicts"] == []  # the resolver's own tombstones are not a new conflict


async def test_true_conflict_refuses_and_lists_the_fields(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    make_true_conflict(backend, db, "both")
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/both/resolve", auth=admin(backend), json={"strategy": "auto"}
    )
    assert status == 409 and body["error"] == "conflict" and body["fields"] == [["v"]]
    assert backend.request("GET", f"/{db}/both?conflicts=true")[1]["_conflicts"] == ["2-bbb"]


async def test_pick_and_merge(gateway: Gateway, backend: PouchServer, db: str) -> None:
    make_concurrent(backend, db, "p")
    status, body, _ = await gateway.call(
        "POST",
        f"/{db}/_couchgate/conflicts/p/resolve",
        auth=admin(backend),
        json={"strategy": "pick", "rev": "2-bbb"},
    )
    assert status == 200, body
    _, doc = backend.request("GET", f"/{db}/p?conflicts=true")
    assert "_conflicts" not in doc and doc["read"] == ["admin", "some_user"] and doc["v"] == 1
    make_concurrent(backend, db, "m")
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/m/resolve", auth=admin(backend),
                                         json={"strategy": "merge", "doc": {"type": "data_record", "v": 9}})  # fmt: skip
    assert status == 200
    _, doc = backend.request("GET", f"/{db}/m?conflicts=true")
    assert "_conflicts" not in doc and doc["v"] == 9 and "read" not in doc


async def test_a_leaf_that_moved_is_409_and_nothing_written(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    make_concurrent(backend, db)
    seen = ["2-bbb", "2-ccc"]
    write(
        backend, db, leaf("shared", ["3-ddd", "2-bbb", "1-aaa"], type="data_record", read=["admin"], v=5)
    )  # moves under us
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/shared/resolve", auth=admin(backend),
                                         json={"strategy": "pick", "rev": "2-ccc", "leaves": seen})  # fmt: skip
    assert_couch_error(status, body, 409, "conflict")
    assert sorted(backend.request("GET", f"/{db}/shared?conflicts=true")[1]["_conflicts"] + ["3-ddd"]) == [
        "2-ccc",
        "3-ddd",
    ]


async def test_only_admins_and_holders_of_the_permission(
    gateway: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    make_concurrent(backend, db)
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts", auth=users["alice"].auth)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts")
    assert_couch_error(status, body, 401, "unauthorized")
    settings = {
        "_id": "settings",
        "settings": {"roles": {"member": {}}, "permissions": {"can_resolve_conflicts": ["member"]}},
    }
    # The settings doc lives in couchgate's main database (this test's db).
    assert backend.request("PUT", f"/{db}/settings", settings)[0] == 201
    body = None
    for _ in range(50):
        status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts", auth=users["alice"].auth)
        if status == 200:
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert status == 200 and [c["id"] for c in body["conflicts"]] == ["shared"]


async def test_split_a_uuid_collision_and_repeat(gateway: Gateway, backend: PouchServer, db: str) -> None:
    a = admin(backend)
    write(backend, db, leaf("X1", ["1-p0"], type="person", name="Ann", parent={"_id": "hh"}),
          leaf("X1", ["1-r0"], type="data_record", form="visit", fields={"patient_uuid": "p7"}))  # fmt: skip
    for doc in ({"_id": "rep1", "type": "data_record", "fields": {"patient_uuid": "X1"}},
                {"_id": "rep2", "type": "data_record", "fields": {"inputs": {"contact": {"_id": "X1"}}}},
                {"_id": "task1", "type": "task", "requester": "X1"}):  # fmt: skip
        assert backend.request("PUT", f"/{db}/{doc['_id']}", doc)[0] == 201
    status, plan, _ = await gateway.call("POST", f"/{db}/_couchgate/conflicts/X1/split", auth=a, json={})
    assert status == 200 and plan["dry_run"] is True and plan["unresolved"] == 1
    ids = {leaf["type"]: leaf["new_id"] for leaf in plan["leaves"]}
    chosen = {(r["doc_id"], ".".join(map(str, r["path"]))): r["chosen"] for r in plan["references"]}
    assert chosen == {("rep1", "fields.patient_uuid"): ids["person"], ("rep2", "fields.inputs.contact._id"): ids["person"],
                      ("task1", "requester"): None}  # fmt: skip
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/X1/split?dry_run=false", auth=a, json={}
    )
    assert_couch_error(status, body, 409, "conflict")  # a reference still needs a choice
    confirm = {"references": {"task1": {"requester": ids["data_record"]}}}
    status, done, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/X1/split?dry_run=false", auth=a, json=confirm
    )
    assert status == 200 and done["already_split"] is False, done
    assert backend.request("GET", f"/{db}/{ids['person']}")[1]["name"] == "Ann"
    assert backend.request("GET", f"/{db}/{ids['data_record']}")[1]["form"] == "visit"
    assert backend.request("GET", f"/{db}/X1")[0] == 404
    assert backend.request("GET", f"/{db}/rep2")[1]["fields"]["inputs"]["contact"]["_id"] == ids["person"]
    assert backend.request("GET", f"/{db}/task1")[1]["requester"] == ids["data_record"]
    _, before = backend.request("GET", f"/{db}/_all_docs")
    status, again, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/X1/split?dry_run=false", auth=a, json=confirm
    )
    assert status == 200 and again["already_split"] is True
    assert backend.request("GET", f"/{db}/_all_docs")[1] == before


@pytest.mark.parametrize("payload", [{"strategy": "auto"}])
async def test_concurrent_edit_needs_no_split(
    gateway: Gateway, backend: PouchServer, db: str, payload: dict[str, str]
) -> None:
    make_concurrent(backend, db)
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/shared/split", auth=admin(backend), json={}
    )
    assert_couch_error(status, body, 400, "bad_request")
