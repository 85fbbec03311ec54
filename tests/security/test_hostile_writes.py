"""Random writes by a hostile offline user never change what any other user may read,
except by the tree rules (pure: the access rules and the scope index, no I/O).

The attacker (`chw1`, area1, a CHW's permissions) sends batches of docs built from every
value that could widen a scope: other contacts' ids and shortcodes as shortcodes, parents
and subjects; user doc ids; `_unassigned`; `_local/` and `_design/` ids; moves of their
own contacts anywhere; deletes; any JSON type in any field. Whatever the rules allow is
applied to the index, as CouchDB would store it. Then, for every other user:
1. every doc the attacker did not write is exactly as readable as before (no gain, and no
   loss but one: a report that names one of the attacker's own contacts by a shortcode
   the attacker dropped from it is named by nobody; a loss within their own area);
2. every doc the attacker wrote that they can read, is readable by them too, and users
   whose scope does not hold the attacker's area read none of them: writes land in the
   attacker's own area, never in someone else's (no forged submitter, no foreign task).

The database also holds docs about nobody yet (a report naming the id `atk1`, one naming
the shortcode `5555`, a person whose parent is `atk2`, a target owned by `atk3`) and docs
the depths hide from the attacker (a person below p1, beyond their depth; with a
`report_depth`, a report about p2): no write of theirs may claim any of them (W9, W10).

"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.access.batch import authorize_batch
from proxy.access.config import AppSettings, UserCtx
from proxy.access.scope_index import ScopeIndex

from offline_data import DOCS, SETTINGS, USERS

ATTACKER = UserCtx("chw1", ("chw",), ("area1",), "chw1_person")
OTHERS = [
    UserCtx("chw2", ("chw",), ("area2",), None),
    UserCtx("supervisor", ("chw_supervisor",), ("hc1",), None),
    UserCtx("chw9", ("chw",), ("area3",), "p9"),
    UserCtx("sup2", ("chw_supervisor",), ("hc2",), None),
]
assert USERS["chw1"]["facility_id"] == "area1"

EXISTING = [d["_id"] for d in DOCS]
CONTACT_IDS = ["district1", "hc1", "area1", "area2", "chw1_person", "house1", "p1", "p2", "house2", "p3",
               "district2", "hc2", "area3", "house3", "p9"]  # fmt: skip
NEW_IDS = ["atk1", "atk2", "atk3"]
CODES = ["1001", "3003", "9999", "5555"]
ORPHANS = [
    {"_id": "r_orphan_id", "type": "data_record", "fields": {"patient_uuid": "atk1"}, "contact": {"_id": "p9"}},
    {"_id": "r_orphan_code", "type": "data_record", "fields": {"patient_id": "5555"}, "contact": {"_id": "p9"}},
    {"_id": "orphan_child", "type": "person", "parent": {"_id": "atk2"}},
    {"_id": "orphan_target", "type": "target", "owner": "atk3"},
    {"_id": "deep_child", "type": "person", "parent": {"_id": "p1"}},  # depth 3: beyond the CHW's 2
    {"_id": "r_deep", "type": "data_record", "fields": {"patient_uuid": "p2"}, "contact": {"_id": "p3"}},
]  # fmt: skip
SPECIAL = ["_unassigned", "org.couchdb.user:chw1", "org.couchdb.user:chw2", "org.couchdb.user:supervisor"]
VALUES = [*CONTACT_IDS, *NEW_IDS, *CODES, *SPECIAL]
IDS = [*EXISTING, *NEW_IDS, *CODES, "_local/x", "_design/x", "org.couchdb.user:chw2"]
# Reports and people are what an attacker writes most: drawn more often.
TYPES = ["person", "person", "clinic", "health_center", "contact", "data_record", "data_record", "data_record",
         "task", "target", "user-settings", "form", None]  # fmt: skip

junk = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.lists(st.sampled_from(VALUES), max_size=2),
                 st.dictionaries(st.sampled_from(["_id", "x"]), st.sampled_from(VALUES), max_size=2))  # fmt: skip
value = st.sampled_from(VALUES) | junk


@st.composite
def lineages(draw: st.DrawFn) -> Any:
    ids = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4))
    node: Any = None
    for i in reversed(ids):
        node = {"_id": i, **({"parent": node} if node else {})}
    return draw(st.just(node) | junk)


@st.composite
def hostile_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": draw(st.sampled_from(IDS))}
    kind = draw(st.sampled_from(TYPES))
    if kind is not None:
        doc["type"] = kind
    if kind == "contact":
        doc["contact_type"] = draw(st.sampled_from(["household", "patient", "x"]))
    for name, strategy in (
        ("parent", lineages()),
        ("contact", lineages()),
        ("patient_id", value),
        ("place_id", value),
        ("user", value),
        ("owner", value),
        ("facility_id", value),
        ("fields", st.fixed_dictionaries({}, optional={
            "patient_id": value, "patient_uuid": value, "place_id": value,
            "needs_signoff": st.booleans(), "private": st.booleans()})),
    ):  # fmt: skip
        if draw(st.booleans()):
            doc[name] = draw(strategy)
    if draw(st.integers(0, 5)) == 0:
        doc["_deleted"] = True
    return doc


def subject_of(doc: dict[str, Any]) -> Any:
    fields = doc.get("fields") if isinstance(doc.get("fields"), dict) else {}
    return fields.get("patient_id") or doc.get("patient_id") or fields.get("place_id") or doc.get("place_id")


def readable(index: ScopeIndex, app: AppSettings, user: UserCtx) -> set[str]:
    return {e.id for e in index.readable_entries(user, app)}


FORGED = {"_id": "atk1", "type": "data_record", "fields": {"patient_uuid": "p1", "needs_signoff": True},
          "contact": {"_id": "p3", "parent": {"_id": "house2", "parent": {"_id": "area2"}}}}  # fmt: skip
PLANTED = {"_id": "atk2", "type": "person", "parent": {"_id": "house1"}, "patient_id": "3003"}
MOVED_OUT = {"_id": "house1", "type": "clinic", "parent": {"_id": "area3"}}
FOREIGN_TASK = {"_id": "atk3", "type": "task", "user": "org.couchdb.user:chw2", "owner": "p1"}
ADOPT_CHILD = {"_id": "atk2", "type": "clinic", "parent": {"_id": "area1"}}
ADOPT_OWNER = {"_id": "atk3", "type": "person", "parent": {"_id": "house1"}}
MOVE_UP = {"type": "person", "parent": {"_id": "area1"}}
CLAIMS = [{"_id": "atk1", "type": "person", "parent": {"_id": "house1"}},
          {"_id": "atk2", "type": "person", "parent": {"_id": "house1"}, "patient_id": "5555"}]  # fmt: skip


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(batches=[[FORGED]], report_depth=None)
@example(batches=[[PLANTED], [{**FORGED, "fields": {"patient_id": "3003"}}]], report_depth=None)
@example(batches=[[MOVED_OUT, {**PLANTED, "_id": "p1", "parent": {"_id": "house1"}}]], report_depth=None)
@example(batches=[[FOREIGN_TASK]], report_depth=None)
@example(batches=[CLAIMS, [ADOPT_CHILD], [ADOPT_OWNER]], report_depth=None)
@example(batches=[[{**MOVE_UP, "_id": "p1"}], [{**MOVE_UP, "_id": "p2"}]], report_depth=1)
@given(
    batches=st.lists(st.lists(hostile_docs(), min_size=1, max_size=4), min_size=1, max_size=6),
    report_depth=st.sampled_from([None, 0, 1]),
)
def test_hostile_writes_change_nothing_for_others(
    batches: list[list[dict[str, Any]]], report_depth: int | None
) -> None:
    settings_doc = copy.deepcopy(SETTINGS)
    if report_depth is not None:
        settings_doc["settings"]["replication_depth"] = [
            {"role": "chw", "depth": 2, "report_depth": report_depth}
        ]
    app = AppSettings.from_doc(settings_doc)
    index = ScopeIndex()
    bodies: dict[str, dict[str, Any]] = {}
    for n, doc in enumerate([*DOCS, *ORPHANS]):
        body = {**doc, "_rev": f"1-{n}"}
        bodies[body["_id"]] = body
        index.apply(body)
    before = {u.name: readable(index, app, u) for u in OTHERS}
    mine_before = readable(index, app, ATTACKER)
    written: set[str] = set()
    dropped: set[str] = set()  # shortcodes the attacker took off contacts of their area
    rev = 1000
    for batch in batches:
        ids = [str(d["_id"]) for d in batch]
        stored = {i: (b if not b.get("_deleted") else None) for i in ids if (b := bodies.get(i)) is not None}
        deleted = {i for i in ids if bodies.get(i, {}).get("_deleted")}
        hidden = deleted - index.readable_ids(deleted, ATTACKER, app)
        decisions = authorize_batch(ATTACKER, app, index, batch, stored, hidden)
        for doc, decision in zip(batch, decisions, strict=True):
            if not decision.allowed:
                continue
            rev += 1
            was = stored.get(str(doc["_id"])) or {}
            for field in ("patient_id", "place_id"):
                if isinstance(was.get(field), str) and doc.get(field) != was[field]:
                    dropped.add(was[field])
            body = {**doc, "_rev": f"{rev}-x"}
            if body.get("_deleted") is True:
                body = {"_id": body["_id"], "_rev": body["_rev"], "_deleted": True}
            bodies[body["_id"]] = body
            index.apply(body)
            written.add(body["_id"])
    mine = readable(index, app, ATTACKER)
    assert mine <= mine_before | written, mine - mine_before - written  # no write widens their own scope
    for user in OTHERS:
        now = readable(index, app, user)
        lost = {i for i in before[user.name] - now if i not in written}
        gained = {i for i in now - before[user.name] if i not in written}
        unnamed = {i for i in lost if subject_of(bodies[i]) in dropped}
        assert not gained and lost == unnamed, (user.name, gained, lost, written)
        assert {i for i in now & written if not bodies[i].get("_deleted")} <= mine, (
            user.name,
            now & written - mine,
        )
        if "area1" not in now:
            assert not now & written, (user.name, now & written)
