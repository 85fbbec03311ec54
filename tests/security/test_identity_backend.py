"""Issue 11, item 5: no request kills the backend.

Each request shape below took a stock pouchdb-server process down (see BACKENDS.md, and
`_bulk_get` with `latest`, found here). couchgate refuses or rewrites them for every caller
it forwards raw (online users, token callers, admins), answering as CouchDB would. These
tests run against a backend of their own, so that a failure cannot take the session's
backend down with it; after every request it must still answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from identity_support import new_user, token_of

from proxy.devserver.backend import PouchServer
from proxy.forward.guard import filter_problem, revs_diff_ok

from support import (
    MEMBER_ROLE,
    Gateway,
    assert_couch_error,
    basic,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

FILTERS = {"ok": "function (doc) { return true; }"}
VIEWS = {"v": {"map": "function (doc) { emit(doc._id, null); }"}}


@pytest.fixture(scope="module")
def fragile() -> Iterator[PouchServer]:
    with PouchServer() as server:
        yield server


@pytest.fixture
async def setup(fragile: PouchServer) -> AsyncIterator[tuple[Gateway, str, dict[str, str]]]:
    db = f"t-{uuid.uuid4().hex[:10]}"
    assert fragile.request("PUT", f"/{db}")[0] == 201
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": [MEMBER_ROLE]}}
    assert fragile.request("PUT", f"/{db}/_security", security)[0] == 200
    assert fragile.request("PUT", f"/{db}/doc1", {"a": 1})[0] == 201
    assert fragile.request("PUT", f"/{db}/_design/f", {"filters": FILTERS, "views": VIEWS})[0] == 201
    gw = await start_gateway(gateway_settings(fragile, db))
    user = new_user(fragile)
    callers = {
        "basic": user.auth,
        "token": await token_of(gw, user.name, user.password),
        "admin": basic(fragile.admin_user, fragile.admin_password),
    }
    try:
        yield gw, db, callers
    finally:
        await stop_gateway(gw)
        fragile.request("DELETE", f"/{db}")


def alive(backend: PouchServer, db: str) -> None:
    assert backend._proc is not None and backend._proc.poll() is None, "the backend died"
    status, body = backend.request("GET", f"/{db}/doc1")
    assert status == 200, body


def rev_of(backend: PouchServer, db: str, doc_id: str = "doc1") -> str:
    return str(backend.request("GET", f"/{db}/{doc_id}")[1]["_rev"])  # type: ignore[index]


async def test_database_create_and_delete_only_for_server_admins(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]]
) -> None:
    gw, db, callers = setup
    for kind in ("basic", "token"):
        status, body, _ = await gw.call("PUT", f"/new-{uuid.uuid4().hex[:8]}", auth=callers[kind])
        assert_couch_error(status, body, 401 if kind == "basic" else 403)
        alive(fragile, db)
        status, body, _ = await gw.call("DELETE", f"/{db}", auth=callers[kind])
        assert_couch_error(status, body, 401 if kind == "basic" else 403)
        alive(fragile, db)
    name = f"new-{uuid.uuid4().hex[:8]}"
    status, body, _ = await gw.call("PUT", f"/{name}", auth=callers["admin"])
    assert status == 201, body  # an admin's PUT /db is legit
    status, body, _ = await gw.call("DELETE", f"/{name}", auth=callers["admin"])
    assert status == 200, body
    alive(fragile, db)


FILTER_CASES: list[tuple[str, str, Any, int, str]] = [
    ("POST", "_changes?filter=_selector", {"selector": {"a": 1}}, 400, "bad_request"),
    ("GET", "_changes?filter=_selector", None, 400, "bad_request"),
    ("GET", "_changes?filter=_design", None, 400, "bad_request"),
    ("GET", "_changes?filter=nope/x", None, 404, "not_found"),
    ("GET", "_changes?filter=f/nope", None, 404, "not_found"),
    ("GET", "_changes?filter=nope", None, 400, "bad_request"),
    ("GET", "_changes?filter=_foo", None, 400, "bad_request"),
    ("GET", "_changes?filter=_view", None, 400, "bad_request"),
    ("GET", "_changes?filter=_view&view=nope/x", None, 404, "not_found"),
    ("GET", "_changes?filter=_view&view=f/nope", None, 404, "not_found"),
    ("GET", "_changes?filter=_view&view=f", None, 400, "bad_request"),
    ("GET", "_changes?filter=_view&view=f/v&view=f/v", None, 400, "bad_request"),
    ("GET", "_changes?filter=f/filters&feed=longpoll", None, 404, "not_found"),
]


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_changes_filters_that_kill_are_refused(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]], kind: str
) -> None:
    gw, db, callers = setup
    for method, query, body, status_wanted, error in FILTER_CASES:
        status, answer, _ = await gw.call(method, f"/{db}/{query}", auth=callers[kind], json=body)
        assert_couch_error(status, answer, status_wanted, error)
        alive(fragile, db)
    for query in (
        "_changes?filter=f/ok",
        "_changes?filter=_view&view=f/v",
        '_changes?filter=_doc_ids&doc_ids=["doc1"]',
    ):
        status, answer, _ = await gw.call("GET", f"/{db}/{query}", auth=callers[kind])
        assert status == 200 and "doc1" in {r["id"] for r in answer["results"]}, (query, answer)
    alive(fragile, db)


async def test_a_non_member_learns_nothing_about_design_docs(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]]
) -> None:
    gw, db, _ = setup
    stranger = new_user(fragile, roles=("stranger",))
    answers = set()
    for query in ("_changes?filter=f/ok", "_changes?filter=nope/x", "_changes?filter=_view&view=f/nope"):
        status, body, _ = await gw.call("GET", f"/{db}/{query}", auth=stranger.auth)
        answers.add((status, body.get("error") if isinstance(body, dict) else None))
        alive(fragile, db)
    assert len(answers) == 1 and next(iter(answers))[0] in (401, 403), answers


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_open_revs_of_missing_revisions_with_latest(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]], kind: str
) -> None:
    gw, db, callers = setup
    rev = rev_of(fragile, db)
    for latest in ("true", "1", "TRUE"):
        status, body, _ = await gw.call(
            "GET", f'/{db}/doc1?open_revs=["1-abc"]&latest={latest}', auth=callers[kind]
        )
        assert status == 200 and body == [{"missing": "1-abc"}], body
        alive(fragile, db)
    status, body, _ = await gw.call(
        "GET", f'/{db}/doc1?open_revs=["{rev}","2-x"]&latest=true', auth=callers[kind]
    )
    assert status == 200, body
    assert [row.get("ok", {}).get("_rev") for row in body if "ok" in row] == [rev]
    assert {"missing": "2-x"} in body
    status, body, _ = await gw.call("GET", f'/{db}/doc1?open_revs=["{rev}"]&latest=true', auth=callers[kind])
    assert status == 200 and body[0]["ok"]["_rev"] == rev, body
    status, body, _ = await gw.call("GET", f"/{db}/doc1?open_revs=[1]&latest=true", auth=callers[kind])
    assert_couch_error(status, body, 400, "bad_request")
    alive(fragile, db)


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_bulk_get_of_missing_revisions_with_latest(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]], kind: str
) -> None:
    gw, db, callers = setup
    rev = rev_of(fragile, db)
    docs = {"docs": [{"id": "doc1", "rev": "1-abc"}, {"id": "doc1", "rev": rev}, {"id": "doc1"}]}
    status, body, _ = await gw.call(
        "POST", f"/{db}/_bulk_get?latest=true&revs=true", auth=callers[kind], json=docs
    )
    assert status == 200, body
    docs_by_rev: dict[str, Any] = {}
    for row in body["results"]:
        assert row["id"] == "doc1", row
        for doc in row["docs"]:
            docs_by_rev[doc["ok"]["_rev"] if "ok" in doc else doc["error"]["rev"]] = doc
    assert docs_by_rev["1-abc"] == {
        "error": {"id": "doc1", "rev": "1-abc", "error": "not_found", "reason": "missing"}
    }
    assert docs_by_rev[rev]["ok"]["a"] == 1
    alive(fragile, db)
    status, body, _ = await gw.call(
        "POST",
        f"/{db}/_bulk_get?latest=true",
        auth=callers[kind],
        json={"docs": [{"id": "doc1", "rev": "9-z"}]},
    )
    assert status == 200 and body["results"][0]["docs"][0]["error"]["rev"] == "9-z", body
    alive(fragile, db)


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_revs_diff_with_non_arrays(
    fragile: PouchServer, setup: tuple[Gateway, str, dict[str, str]], kind: str
) -> None:
    gw, db, callers = setup
    for body in ({"doc1": "1-abc"}, {"doc1": 5}, {"doc1": [5]}, {"doc1": None}, [1], "x"):
        status, answer, _ = await gw.call("POST", f"/{db}/_revs_diff", auth=callers[kind], json=body)
        assert_couch_error(status, answer, 400, "bad_request")
        alive(fragile, db)
    status, answer, _ = await gw.call("POST", f"/{db}/_revs_diff", auth=callers[kind], data=b"{not json")
    assert_couch_error(status, answer, 400, "bad_request")
    status, answer, _ = await gw.call(
        "POST", f"/{db}/_revs_diff", auth=callers[kind], json={"doc1": ["1-abc"]}
    )
    assert status == 200 and answer == {"doc1": {"missing": ["1-abc"]}}, answer


def test_filter_rules_follow_couchdb() -> None:
    """The same rules on every backend (CouchDB answers these itself, or crashes into a 500)."""
    assert filter_problem([], []) is None and filter_problem([""], []) is None
    assert filter_problem(["ddoc/fn"], []) is None
    assert filter_problem(["_selector"], []) is None  # CouchDB has it: refused only on pouchdb-server
    assert filter_problem(["_view"], ["d/v"]) is None
    for filters, views in ((["x"], []), (["a/b/c"], []), (["/b"], []), (["_x"], []), (["_view"], []),
                           (["_view"], ["dv"]), (["a/b", "c/d"], [])):  # fmt: skip
        assert filter_problem(filters, views), (filters, views)
    assert revs_diff_ok({"a": ["1-x"], "b": []}) and not revs_diff_ok({"a": "1-x"}) and not revs_diff_ok([])
