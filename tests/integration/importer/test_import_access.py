"""Who may import what, and that the answers tell nobody about docs they may not see."""

from __future__ import annotations

from typing import Any

import orjson
from import_support import do_import, statuses

from proxy.devserver.backend import PouchServer

from offline_data import CHW1_LINE, DOCS, person, place, report
from offline_data import auth as offline_auth
from support import ON_COUCHDB, Gateway, TestUser, assert_couch_error, basic

OUT_OF_SCOPE = "the document is outside your replication scope"


async def post(gw: Gateway, path: str, auth: str, payload: Any) -> tuple[int, Any]:
    status, body, _ = await gw.call(
        "POST", path, auth=auth, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}
    )
    return status, body


async def test_a_non_member_is_refused_up_front_whatever_exists(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    backend.request("POST", f"/{db}/_bulk_docs", {"docs": [{"_id": "secret", "v": 1}]})
    mallory, path = users["mallory"].auth, f"/{db}/_couchgate/import"
    answers = []
    for query in ("?dry_run=true", "?dry_run=true&on_conflict=overwrite", ""):
        for payload in ([{"_id": "secret", "v": 1}], [{"_id": "nothing-here", "v": 1}]):
            status, body = await post(gateway, path + query, mallory, payload)
            # An authenticated non-member: CouchDB's 403, pouchdb-server's 401.
            assert_couch_error(status, body, 403 if ON_COUCHDB else 401)
            answers.append((status, body))
    assert all(a == answers[0] for a in answers)  # the same answer for existing and missing docs
    assert backend.request("GET", f"/{db}/nothing-here")[0] == 404
    assert backend.request("GET", f"/{db}/secret")[1]["_rev"].startswith("1-")


async def test_system_databases_are_for_server_admins_only(
    gateway: Gateway, users: dict[str, TestUser], backend: PouchServer
) -> None:
    payload = [{"_id": "org.couchdb.user:alice"}, {"_id": "org.couchdb.user:nobody"}]
    for name in ("alice", "mallory"):
        for path in ("/_users/_couchgate/import?dry_run=true", "/_replicator/_couchgate/import"):
            status, body = await post(gateway, path, users[name].auth, payload)
            assert_couch_error(status, body, 403, "forbidden")
    admin = basic(backend.admin_user, backend.admin_password)
    status, body = await post(gateway, "/no-such-db/_couchgate/import", admin, [{"_id": "a"}])
    assert_couch_error(status, body, 404, "not_found")
    answer = await do_import(gateway, "/_users/_couchgate/import", admin, payload[:1], "?dry_run=true")
    assert statuses(answer) == [("org.couchdb.user:alice", "skipped")]  # admins read with the service account


async def test_offline_answers_are_no_existence_oracle(gw: Gateway, medic: str, backend: PouchServer) -> None:
    """chw1 names docs outside their scope: existing (identical or changed) and missing ones
    all get the same `forbidden`, without a rev. A doc in scope that is identical is `unchanged`."""
    p9 = next(d for d in DOCS if d["_id"] == "p9")
    r_p9 = next(d for d in DOCS if d["_id"] == "r_p9")
    p1 = next(d for d in DOCS if d["_id"] == "p1")
    payload = [
        p9,  # exists, identical, out of scope
        {**r_p9, "fields": {"patient_uuid": "p9", "guess": 1}},  # exists, changed, out of scope
        person("p_none", "house3", "area3", "hc2", "district2"),  # missing, out of scope
        report("r_none", ("p9", "house3", "area3", "hc2", "district2"), patient_uuid="p9"),  # missing
        {"_id": "org.couchdb.user:chw2", "type": "user-settings", "name": "chw2", "facility_id": "area2"},
        {"_id": "org.couchdb.user:chw9", "type": "user-settings", "name": "chw9", "facility_id": "area2"},
        p1,  # in scope, identical
    ]
    for query in ("?dry_run=true", "", "?on_conflict=overwrite", "?on_conflict=keep_both"):
        answer = await do_import(gw, "/import", offline_auth("chw1"), payload, query)
        refused = answer["results"][:6]
        assert [r["status"] for r in refused] == ["forbidden"] * 6, answer
        assert {r["reason"] for r in refused} == {OUT_OF_SCOPE} and not any("rev" in r for r in refused)
        assert answer["results"][6]["status"] == "unchanged" and answer["results"][6]["rev"].startswith("1-")
    for missing in ("p_none", "r_none", "org.couchdb.user:chw9"):
        assert backend.request("GET", f"/{medic}/{missing}")[0] == 404


async def test_offline_mixed_payload_new_existing_identical_invalid_forbidden(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    p3 = next(d for d in DOCS if d["_id"] == "p3")
    r_p3 = next(d for d in DOCS if d["_id"] == "r_p3")
    payload = [
        report("r_new", ("p3", "house2", "area2", "hc1", "district1"), patient_id="3003"),  # new
        {**p3, "name": "renamed"},  # existing, changed
        r_p3,  # identical
        {"_id": "_local/x"},  # invalid
        report("r_far", ("p9", "house3", "area3", "hc2", "district2"), patient_uuid="p9"),  # out of scope
        {"_id": "resources", "resources": {"x": 1}},  # global: never for offline users
    ]
    expected = [("r_new", "created"), ("p3", "skipped"), ("r_p3", "unchanged"), ("_local/x", "invalid"),
                ("r_far", "forbidden"), ("resources", "forbidden")]  # fmt: skip
    dry = await do_import(gw, "/import", offline_auth("supervisor"), payload, "?dry_run=true")
    assert statuses(dry) == expected
    answer = await do_import(gw, "/import", offline_auth("supervisor"), payload)
    assert statuses(answer) == expected and answer["results"][4]["reason"] == OUT_OF_SCOPE
    assert answer["summary"] == {"created": 1, "skipped": 1, "unchanged": 1, "invalid": 1, "forbidden": 2}
    over = await do_import(gw, "/import", offline_auth("supervisor"), payload, "?on_conflict=overwrite")
    assert [s for _, s in statuses(over)] == [
        "unchanged",
        "updated",
        "unchanged",
        "invalid",
        "forbidden",
        "forbidden",
    ]
    assert backend.request("GET", f"/{medic}/p3")[1]["name"] == "renamed"


def fillers(n: int, prefix: str) -> list[dict[str, Any]]:
    return [report(f"{prefix}{i:04d}", CHW1_LINE, patient_uuid="p1") for i in range(n)]


async def test_offline_dry_run_agrees_with_the_real_run_across_chunks(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A new household in the first chunk, its person and their report in the second: a dry
    run judges the second chunk with the first chunk's contacts, as the real run does."""
    house = place("house_new", "clinic", "area2", "hc1", "district1")
    member = person("p_new", "house_new", "area2", "hc1", "district1")
    visit = report("r_new", ("p_new", "house_new", "area2", "hc1", "district1"), patient_uuid="p_new")
    payload = [house, *fillers(699, "fa"), member, visit]
    dry = await do_import(gw, "/import", offline_auth("supervisor"), payload, "?dry_run=true", ndjson=True)
    assert dry["summary"] == {"created": 702}
    assert backend.request("GET", f"/{medic}/house_new")[0] == 404
    real = await do_import(gw, "/import", offline_auth("supervisor"), payload, ndjson=True)
    assert statuses(real) == statuses(dry)
    assert backend.request("GET", f"/{medic}/r_new")[0] == 200


async def test_offline_docs_are_judged_in_input_order_across_chunks(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """The documented limit: within a chunk (500 docs) docs are judged together, but a report
    cannot be judged with a contact that comes in a later chunk. Put contacts first."""
    house = place("house_late", "clinic", "area2", "hc1", "district1")
    member = person("p_late", "house_late", "area2", "hc1", "district1")
    early = report("r_early", ("p_late", "house_late", "area2", "hc1", "district1"), patient_uuid="p_late")
    same_chunk = report(
        "r_same", ("p_late", "house_late", "area2", "hc1", "district1"), patient_uuid="p_late"
    )
    payload = [early, *fillers(598, "fb"), house, member, same_chunk]
    for query in ("?dry_run=true", ""):
        answer = await do_import(gw, "/import", offline_auth("supervisor"), payload, query, ndjson=True)
        rows = answer["results"]
        assert (rows[0]["status"], rows[0]["reason"]) == ("forbidden", OUT_OF_SCOPE)
        assert [r["status"] for r in rows[599:]] == ["created"] * 3  # report after its person: fine
    again = await do_import(gw, "/import", offline_auth("supervisor"), [early])
    assert statuses(again) == [("r_early", "created")]  # imported again once its person is in
