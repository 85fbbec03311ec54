"""GET /_couchgate/users: every offline user, docs in scope, warning, sync activity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ops_support import admin, admin_get

from proxy.access.config import AppSettings, UserCtx
from proxy.access.graph import subjects
from proxy.access.scope_index import ScopeIndex
from proxy.devserver.backend import PouchServer
from proxy.keys import COUCH
from proxy.offline.sync import IndexSync
from proxy.users_at_risk import Counted, Directory, UsersAtRisk, count_scope, still_exact

from offline_data import CHW1_LINE, DOCS, SETTINGS, USERS, auth, person, place, report
from support import Gateway, assert_couch_error, gateway_settings, start_gateway, stop_gateway

OFFLINE = {"chw1", "chw2", "supervisor"}


@pytest.fixture
async def risky(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    """A gateway whose warning limit the supervisor's scope passes."""
    gw = await start_gateway(
        gateway_settings(backend, medic, scope_warn_docs=12, users_refresh_interval=3600)
    )
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def listing(gw: Gateway, backend: PouchServer, query: str = "") -> dict[str, Any]:
    body: dict[str, Any] = await admin_get(gw, backend, f"/_couchgate/users?refresh=true{query}")
    return body


async def test_every_offline_user_with_the_scope_routes_count(risky: Gateway, backend: PouchServer) -> None:
    body = await listing(risky, backend)
    rows = {row["name"]: row for row in body["users"]}
    assert set(rows) >= OFFLINE and "clerk" not in rows  # clerk is an online user
    for name in OFFLINE:
        scope = await admin_get(risky, backend, f"/_couchgate/users/{name}/scope")
        assert rows[name]["docs"] == scope["total"]
        assert rows[name]["warning"] == scope["warning"] == (scope["total"] > 12)
        assert rows[name]["facility_ids"] == [USERS[name]["facility_id"]]
    assert body["complete"] is True and body["counted"] == body["offline_users"]
    assert body["warn_limit"] == 12
    assert body["activity"]["window_seconds"] == 86400


async def test_sorted_by_docs_and_filtered_by_warning(risky: Gateway, backend: PouchServer) -> None:
    body = await listing(risky, backend)
    docs = [row["docs"] for row in body["users"]]
    assert docs == sorted(docs, reverse=True)
    by_name = await listing(risky, backend, "&sort=name")
    names = [row["name"] for row in by_name["users"]]
    assert names == sorted(names)
    warned = await listing(risky, backend, "&warning=true")
    assert warned["users"] and all(row["warning"] for row in warned["users"])
    calm = await listing(risky, backend, "&warning=false")
    assert calm["users"] and not any(row["warning"] for row in calm["users"])
    assert {r["name"] for r in warned["users"]} | {r["name"] for r in calm["users"]} == {
        r["name"] for r in body["users"]
    }
    page = await listing(risky, backend, "&sort=name&limit=1&skip=1")
    assert [r["name"] for r in page["users"]] == names[1:2] and page["total_rows"] == len(names)
    found = await listing(risky, backend, "&name=CHW")
    assert {r["name"] for r in found["users"]} == {"chw1", "chw2"}


async def test_counts_follow_new_docs(risky: Gateway, backend: PouchServer, medic: str) -> None:
    before = {r["name"]: r["docs"] for r in (await listing(risky, backend))["users"]}
    backend.request(
        "PUT", f"/{medic}/p-more", {"type": "person", "parent": {"_id": "house1", "parent": {"_id": "area1"}}}
    )

    # refresh=true: a pass that starts after the request, with the index level with CouchDB.
    after = {r["name"]: r["docs"] for r in (await listing(risky, backend))["users"]}
    assert after["chw1"] == before["chw1"] + 1 and after["chw2"] == before["chw2"]


async def test_last_sync_errors_and_refusals(risky: Gateway, backend: PouchServer, medic: str) -> None:
    first = {r["name"]: r for r in (await listing(risky, backend))["users"]}
    assert first["chw2"]["last_sync"] is None and first["chw2"]["refusals"] == 0
    assert (await risky.call("GET", f"/{medic}/_changes", auth=auth("chw2")))[0] == 200
    assert (await risky.call("GET", f"/{medic}/_design/medic/_view/x", auth=auth("chw2")))[0] == 403
    foreign = {"_id": "r-far", "type": "data_record", "form": "visit", "fields": {"patient_id": "9009"}}
    status, rows, _ = await risky.call(
        "POST",
        f"/{medic}/_bulk_docs",
        auth=auth("chw2"),
        json={"docs": [foreign, {**foreign, "_id": "r-far2"}]},
    )
    assert status == 201 and all(r["error"] == "forbidden" for r in rows)
    assert (await risky.call("GET", f"/{medic}/_changes?limit=x", auth=auth("chw2")))[0] == 400
    rows_now = {r["name"]: r for r in (await listing(risky, backend))["users"]}
    chw2 = rows_now["chw2"]
    assert chw2["last_sync"] is not None
    assert chw2["refusals"] == 3  # the view request and the two docs
    assert chw2["errors"] == 1 and chw2["last_error"]["route"] == "offline_changes"
    assert rows_now["chw1"]["refusals"] == 0
    by_refusals = await listing(risky, backend, "&sort=refusals")
    assert by_refusals["users"][0]["name"] == "chw2"


async def test_admins_only_and_bad_parameters(risky: Gateway, backend: PouchServer) -> None:
    status, body, _ = await risky.call("GET", "/_couchgate/users", auth=auth("supervisor"))
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await risky.call("GET", "/_couchgate/users")
    assert_couch_error(status, body, 401, "unauthorized")
    for query in ("sort=password", "warning=yes", "limit=-1", "descending=1", "refresh=2"):
        status, body, _ = await risky.call("GET", f"/_couchgate/users?{query}", auth=admin(backend))
        assert_couch_error(status, body, 400, "bad_request")


def test_count_scope_counts_as_the_index_does_and_leaves_its_caches_alone() -> None:
    index = fresh()
    settings = AppSettings.from_doc(SETTINGS)
    for name, fields in USERS.items():
        user = UserCtx(name, tuple(fields["roles"]), (fields["facility_id"],), fields.get("contact_id"))
        assert count_scope(index, user, settings) == ScopeIndex.count_by_kind(fresh(), user, settings)
        assert not index._feeds and not index._subjects


def fresh() -> ScopeIndex:
    index = ScopeIndex()
    for doc in [SETTINGS, *DOCS]:
        index.apply({**doc, "_rev": "1-a"})
    return index


async def test_a_pass_counts_from_couchdbs_state_at_its_start(
    gw: Gateway, backend: PouchServer, medic: str
) -> None:
    """No follower here: only the pass itself brings the index level with CouchDB."""
    couch = gw.server.app[COUCH]
    risk = UsersAtRisk(IndexSync(couch, medic), Directory(couch, medic), 3600)
    await risk.refresh_pass()
    for name in OFFLINE:
        scope = await admin_get(gw, backend, f"/_couchgate/users/{name}/scope")
        assert risk.counts[name].total == scope["total"] > 0
    assert set(risk.counts) == OFFLINE


def test_counting_in_steps_counts_as_counting_at_once() -> None:
    index = fresh()
    settings = AppSettings.from_doc(SETTINGS)
    for name, fields in USERS.items():
        user = UserCtx(name, tuple(fields["roles"]), (fields["facility_id"],), fields.get("contact_id"))
        steps, yields = index.counting(user, settings, step=1), 0
        while True:
            try:
                next(steps)
                yields += 1
            except StopIteration as done:
                assert done.value == ScopeIndex.count_by_kind(fresh(), user, settings)
                break
        candidates = set(index._candidates(subjects(user, settings, index), 0))
        assert yields == 1 + len(candidates)  # once the docs are found, then once a doc


async def test_a_count_the_index_moved_under_is_counted_again(
    gw: Gateway, backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large scope is counted in steps, others running in between (here after every
    step): a change the index takes meanwhile under what a count reads (here a form, which
    every user holds) leaves a count of no single state, shown but not trusted, so the next
    pass counts that user again."""
    monkeypatch.setattr("proxy.users_at_risk.SLICE", 0.0)
    couch = gw.server.app[COUCH]
    risk = UsersAtRisk(IndexSync(couch, medic), Directory(couch, medic), 3600)
    index = risk.sync.index
    moving = True

    async def change_meanwhile() -> None:
        n = 0
        while moving:
            n += 1
            index.apply({"_id": f"form:moving-{n}", "_rev": "1-a", "type": "form"})
            await asyncio.sleep(0)

    mover = asyncio.create_task(change_meanwhile())
    try:
        await risk.refresh_pass()
    finally:
        moving = False
        await mover
    assert set(risk.counts) == OFFLINE
    assert all(risk.counts[name].ordinal == -1 for name in OFFLINE)
    await risk.refresh_pass()
    for name, user in risk.offline_users().items():
        assert risk.counts[name].ordinal == index.ordinal
        assert risk.counts[name].by_kind == count_scope(index, user, risk.sync.settings)


async def test_a_count_the_index_moved_elsewhere_under_stays_exact(
    gw: Gateway, backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes meanwhile that no user holds (reports about nobody's patient, filed under
    keys no scope looks under) leave every count exact, and the next pass recounts nobody."""
    monkeypatch.setattr("proxy.users_at_risk.SLICE", 0.0)
    couch = gw.server.app[COUCH]
    risk = UsersAtRisk(IndexSync(couch, medic), Directory(couch, medic), 3600)
    index = risk.sync.index
    moving = True

    async def change_meanwhile() -> None:
        n = 0
        while moving:
            n += 1
            index.apply({"_id": f"far-{n}", "_rev": "1-a", "type": "data_record", "form": "x",
                         "fields": {"patient_id": "no-such-patient"}, "contact": {"_id": "nobody"}})  # fmt: skip
            await asyncio.sleep(0)

    mover = asyncio.create_task(change_meanwhile())
    try:
        await risk.refresh_pass()
    finally:
        moving = False
        await mover
    for name, user in risk.offline_users().items():
        assert risk.counts[name].ordinal >= 0
        assert risk.counts[name].by_kind == count_scope(index, user, risk.sync.settings)
    recounted = []
    real = index.counting
    monkeypatch.setattr(
        index, "counting", lambda user, *a, **kw: recounted.append(user) or real(user, *a, **kw)
    )
    await risk.refresh_pass()
    assert recounted == []
    assert all(risk.counts[name].ordinal == index.ordinal for name in OFFLINE)


def counted_all(index: ScopeIndex, settings: AppSettings) -> tuple[dict[str, Counted], dict[str, UserCtx]]:
    users = {
        name: UserCtx(name, tuple(fields["roles"]), (fields["facility_id"],), fields.get("contact_id"))
        for name, fields in USERS.items()
        if name in OFFLINE
    }
    counts = {}
    for name, user in users.items():
        keys: list[str] = []
        steps = index.counting(user, settings, keys=keys)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                by_kind = done.value
                break
        counts[name] = Counted(
            by_kind, sum(by_kind.values()), 0.0, index.ordinal, settings, user, index.looked_under(keys)
        )
    return counts, users


# What changes, and whose count it leaves exact. DOCS (tests/offline_data.py): chw1 in
# area1, chw2 in area2, both under hc1, the supervisor's facility.
CHANGES: list[tuple[str, list[dict[str, Any]], set[str]]] = [
    (
        "a report about a patient of nobody's area",
        [report("r-far", ("p9", "house3", "area3", "hc2", "district2"), patient_uuid="p9")],
        OFFLINE,
    ),
    ("a report about a patient of chw1's area", [report("r-near", CHW1_LINE, patient_id="1001")], {"chw2"}),
    ("a new person in chw2's household", [person("new-p", "house2", "area2", "hc1", "district1")], {"chw1"}),
    ("a new household in nobody's area", [place("house9", "clinic", "area3", "hc2", "district2")], OFFLINE),
    ("a form, which every user holds", [{"_id": "form:new", "type": "form"}], set()),
    ("a report of chw1's area deleted", [{"_id": "r_p1", "_deleted": True}], {"chw2"}),
    ("chw1's report moved to chw2's patient", [{**report("r_p1", CHW1_LINE, patient_id="3003")}], set()),
]


@pytest.mark.parametrize(("what", "docs", "exact"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_count_stays_exact_exactly_when_nothing_it_read_changed(
    what: str, docs: list[dict[str, Any]], exact: set[str]
) -> None:
    index = fresh()
    settings = AppSettings.from_doc(SETTINGS)
    counts, users = counted_all(index, settings)
    before = index.ordinal
    for doc in docs:
        index.apply({**doc, "_rev": "2-b"})
    assert index.ordinal > before
    touched = index.touched_since(before)
    kept = {name for name, user in users.items() if still_exact(counts[name], user, settings, index, touched)}
    assert kept == exact, what
    for name in kept:  # what is kept is what a recount would give
        assert counts[name].by_kind == count_scope(index, users[name], settings), name
