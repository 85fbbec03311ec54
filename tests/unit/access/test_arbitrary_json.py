"""No doc, however malformed, makes the access rules or the scope index raise: a `type`
that is a list, a `parent` that is a string, `fields` that is an array... One such doc in
the database must not break sync for every offline user (it did: `kind_of` raised)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.access.batch import authorize_batch
from proxy.access.config import AppSettings, UserCtx, replication_depths
from proxy.access.graph import WalkScope, subjects
from proxy.access.kinds import contact_is_person, kind_of, replication_keys, report_facts
from proxy.access.read import body_readable, scope_inputs
from proxy.access.scope_index import ScopeIndex
from proxy.access.write import authorize_write

FIELDS = [
    "_id", "_rev", "_deleted", "type", "contact_type", "parent", "contact", "fields", "patient_id",
    "place_id", "patient_uuid", "facility_id", "contact_id", "needs_signoff", "private", "owner",
    "user", "roles", "purged", "form", "name",
]  # fmt: skip
WORDS = [
    "person", "clinic", "health_center", "district_hospital", "contact", "data_record", "task",
    "target", "user-settings", "form", "translations", "settings", "_design/x", "_design/medic-client",
    "a1", "h1", "p1", "P1", "org.couchdb.user:u", "_unassigned", "",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(WORDS)
    | st.text(max_size=3)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from([*FIELDS, "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)
docs = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(
    lambda d: {**d, "_id": d["_id"]} if "_id" in d else d
)
app_docs = st.builds(
    lambda roles, perms, depth, types, unallocated: {
        "settings": {
            "roles": roles,
            "permissions": perms,
            "replication_depth": depth,
            "contact_types": types,
            "district_admins_access_unallocated_messages": unallocated,
        }
    },
    json_values | st.just({"chw": {"offline": True}}),
    json_values | st.just({"can_edit": ["chw"], "can_create_records": ["chw"]}),
    json_values | st.lists(st.dictionaries(st.sampled_from(["role", "depth", "report_depth"]), json_values)),
    json_values,
    json_values,
)
USER = UserCtx("u", ("chw",), ("a1",), "p1")


@settings(max_examples=300, deadline=None)
@given(doc=docs, other=docs, app=app_docs)
def test_rules_never_raise_on_arbitrary_json(doc: dict[str, Any], other: dict[str, Any], app: Any) -> None:
    s = AppSettings.from_doc(app)
    replication_depths(USER, s)
    index = ScopeIndex()
    for body in (
        {"_id": "a1", "type": "clinic"},
        {"_id": "h1", "type": "clinic", "parent": {"_id": "a1"}},
        doc,
        other,
    ):
        index.apply(body)
    kind_of(doc)
    replication_keys(doc)
    report_facts(doc)
    contact_is_person(doc, s.person_types)
    subj = subjects(USER, s, index)
    scope_inputs(USER, s)
    body_readable(doc, USER, s, index, subj)
    body_readable(doc, USER, s, index, WalkScope(USER, s, index))
    authorize_write(USER, s, index, doc, other)
    authorize_write(USER, s, index, doc, None, hidden=True)
    authorize_write(USER, s, index, {**doc, "_deleted": True}, None)
    authorize_batch(USER, s, index, [doc, other], {}, {str(other.get("_id"))})
    index.readable_entries(USER, s)
    index.count_by_kind(USER, s)
    index.readable_ids(["a1", "h1", str(doc.get("_id"))], USER, s)
    index.apply({"_id": doc.get("_id"), "_deleted": True})


def test_the_doc_that_broke_sync() -> None:
    for weird in ([], {}, ["person"], {"x": 1}, 7, None):
        doc = {"_id": "weird", "type": weird, "parent": "h1", "fields": [], "contact": 5}
        assert kind_of(doc) == "other" and replication_keys(doc) == ()
    assert kind_of({"_id": ["settings"]}) == "other"
    assert kind_of({"_id": "c", "type": "contact", "contact_type": ["x"]}) == "other"
