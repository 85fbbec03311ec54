"""The access rules, rule by rule, each with allow and deny cases (pure, no I/O).

Every decision, read and write, carries the id of the rule that made it
(`proxy.access.read`, `proxy.access.write`); `READ_RULES` and `WRITE_RULES` are tables keyed
by those ids (docs/design.md), so a test proves which rule decided, not only that
something did. A new rule gets its rows there; the scenario tests below them cover how
rules combine (batches, moves, key spaces)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from proxy.access.batch import authorize_batch
from proxy.access.config import AppSettings, UserCtx, has_permission, is_offline, replication_depths
from proxy.access.graph import ContactNode, Subjects, WalkScope, subjects
from proxy.access.kinds import UNASSIGNED, kind_of, replication_keys
from proxy.access.read import body_readable, body_rule
from proxy.access.write import OUTSIDE, authorize_write, made_up_rev


class Graph:
    """A contact graph from a plain list of docs: the naive oracle's view of the tree. A
    doc with `"_deleted": true` is a deleted contact (it keeps its place)."""

    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self.nodes: dict[str, ContactNode] = {}
        for d in docs:
            if kind_of(d) in {"place", "person", "contact"}:
                parent = (d.get("parent") or {}).get("_id")
                code = d.get("patient_id") or d.get("place_id")
                self.nodes[d["_id"]] = ContactNode(d["_id"], parent, code, d.get("_deleted") is not True)

    def contact(self, contact_id: str) -> ContactNode | None:
        return self.nodes.get(contact_id)

    def children(self, contact_id: str) -> list[str]:
        return [n.id for n in self.nodes.values() if n.parent == contact_id]

    def holders(self, code: str) -> list[str]:
        return [n.id for n in self.nodes.values() if n.shortcode == code]

    def filed(self, key: str) -> list[Any]:
        return []  # no stored docs but contacts: tests/security and the index tests cover claims

    def affected(self, contact_id: str) -> list[Any]:
        return []


def is_readable(doc: dict[str, Any], user: UserCtx, s: AppSettings, graph: Any) -> bool:
    return body_readable(doc, user, s, graph, subjects(user, s, graph))


def lineage(*ids: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = None
    for i in reversed(ids):
        node = {"_id": i, **({"parent": node} if node else {})}
    return node


def contact(doc_id: str, *parents: str, type_: str = "clinic", **extra: Any) -> dict[str, Any]:
    return {"_id": doc_id, "type": type_, "parent": lineage(*parents), **extra}


TREE = [
    contact("d", type_="district_hospital"),
    contact("hc", "d", type_="health_center", place_id="HC01"),
    contact("a1", "hc", "d"),
    contact("a2", "hc", "d"),
    contact("chw", "a1", "hc", "d", type_="person", patient_id="C001"),
    contact("h1", "a1", "hc", "d"),
    contact("p1", "h1", "a1", "hc", "d", type_="person", patient_id="P001"),
    contact("gc", "p1", "h1", "a1", type_="person"),
    contact("h2", "a2", "hc", "d"),
    contact("p2", "h2", "a2", "hc", "d", type_="person", patient_id="P002"),
    {"_id": "typed_hh", "type": "contact", "contact_type": "household", "parent": lineage("a1", "hc", "d")},
    {"_id": "typed_p", "type": "contact", "contact_type": "patient", "parent": lineage("typed_hh", "a1")},
]
G = Graph(TREE)

ALL_PERMS = [
    "can_edit", "can_create_records", "can_update_reports", "can_create_people", "can_create_places",
    "can_update_people", "can_update_places", "can_delete_reports", "can_delete_contacts",
]  # fmt: skip


def settings(depth: int | None = None, report_depth: int | None = None, unallocated: bool = False,
             perms: list[str] | None = None, **extra: Any) -> AppSettings:  # fmt: skip
    rule: dict[str, Any] = {"role": "chw"}
    if depth is not None:
        rule["depth"] = depth
    if report_depth is not None:
        rule["report_depth"] = report_depth
    permissions = {p: ["chw"] for p in (ALL_PERMS if perms is None else perms)}
    permissions["can_view_unallocated_data_records"] = ["chw"]
    return AppSettings.from_doc(
        {"settings": {"roles": {"chw": {"offline": True}, "boss": {}}, "permissions": permissions,
                      "replication_depth": [rule] if depth is not None or report_depth is not None else [],
                      "district_admins_access_unallocated_messages": unallocated, **extra}}
    )  # fmt: skip


CHW = UserCtx("u", ("chw",), ("a1",), "chw")
OWN_SETTINGS = {"_id": "org.couchdb.user:u", "type": "user-settings", "name": "u", "facility_id": "a1",
                "contact_id": "chw"}  # fmt: skip


def report(
    doc_id: str = "r", submitter: tuple[str, ...] = ("chw", "a1", "hc", "d"), **fields: Any
) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "type": "data_record",
        "form": "f",
        "contact": lineage(*submitter),
        "fields": fields,
    }


def readable(doc: dict[str, Any], s: AppSettings | None = None, user: UserCtx = CHW) -> bool:
    return is_readable(doc, user, s or settings(), G)


# -- section 1: users --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "admin", "offline"),
    [(("chw",), False, True), (("boss",), False, False), (("chw", "mm-online"), False, False),
     (("chw", "_admin"), False, False), (("chw",), True, False), ((), False, False)],
)  # fmt: skip
def test_offline_users(roles: tuple[str, ...], admin: bool, offline: bool) -> None:
    assert is_offline(UserCtx("x", roles, is_admin=admin), settings()) is offline


def test_permissions_with_negation_and_admins() -> None:
    s = settings(perms=["can_edit"])
    assert has_permission(CHW, s, "can_edit") and not has_permission(CHW, s, "can_delete_reports")
    assert has_permission(CHW, s, "!can_delete_reports") and not has_permission(CHW, s, "!can_edit")
    assert has_permission(UserCtx("a", ("_admin",)), s, "anything")


def test_depth_rules() -> None:
    doc = {"settings": {"replication_depth": [
        {"role": "chw", "depth": 1, "report_depth": 0}, {"role": "sup", "depth": 2},
        {"role": "x", "depth": 2, "report_depth": 1}, {"role": "all", "depth": -1}]}}  # fmt: skip
    s = AppSettings.from_doc(doc)
    assert replication_depths(UserCtx("a", ("chw",)), s) == (1, 0)
    assert replication_depths(UserCtx("a", ("chw", "sup")), s) == (2, None)  # tie: largest report_depth
    assert replication_depths(UserCtx("a", ("chw", "x")), s) == (2, 1)
    assert replication_depths(UserCtx("a", ("chw", "all")), s) == (None, None)
    assert replication_depths(UserCtx("a", ("nobody",)), s) == (None, None)


def test_depths_kept_for_a_set_of_roles_follow_the_rules_in_force() -> None:
    """The depths are kept per set of roles, for one set of rules: new settings (equal
    rules in a new doc too) answer their own, and going back answers the old ones again."""
    one = AppSettings.from_doc(
        {"settings": {"replication_depth": [{"role": "chw", "depth": 1, "report_depth": 0}]}}
    )
    two = AppSettings.from_doc({"settings": {"replication_depth": [{"role": "chw", "depth": 3}]}})
    chw = UserCtx("a", ("chw",))
    for _ in range(2):
        assert replication_depths(chw, one) == (1, 0)
        assert replication_depths(chw, two) == (3, None)
    assert replication_depths(UserCtx("b", ("chw",)), settings()) == (None, None)


def test_malformed_settings_count_as_absent() -> None:
    for doc in (
        None,
        {},
        {"settings": []},
        {"settings": {"roles": [], "permissions": "x", "replication_depth": {}}},
    ):
        s = AppSettings.from_doc(doc)
        assert not is_offline(CHW, s) and replication_depths(CHW, s) == (None, None)


# -- section 2: reading -------------------------------------------------------------------


def test_subjects_walk_down_to_depth_with_shortcodes() -> None:
    shallow = subjects(CHW, settings(depth=1), G)
    assert set(shallow.contacts) == {"a1", "chw", "h1", "typed_hh"}
    assert set(shallow.codes) == {"C001"} and shallow.own == "org.couchdb.user:u"
    deep = subjects(CHW, settings(), G)
    assert deep.contacts["gc"] == 3 and deep.codes["P001"] == 2 and "p2" not in deep.contacts


def test_multiple_facilities_and_unallocated() -> None:
    user = UserCtx("u", ("chw",), ("a1", "a2"), "chw")
    assert {"p1", "p2"} <= set(subjects(user, settings(), G).contacts)
    assert subjects(CHW, settings(unallocated=True), G).unassigned
    assert not subjects(CHW, settings(unallocated=False), G).unassigned
    no_permission = AppSettings.from_doc(
        {"settings": {"district_admins_access_unallocated_messages": True, "permissions": {}}}
    )
    assert not subjects(CHW, no_permission, G).unassigned


def rule_case(rule: str, note: str, *values: Any) -> Any:
    """A table row whose test id starts with the rule id (`pytest -k W11` runs its rows)."""
    return pytest.param(rule, *values, id=f"{rule} {note}")


SUPERVISOR = UserCtx("s", ("chw",), ("hc",))
FOREIGN_SUBMITTER = ("p2", "h2", "a2")

# rule, note, doc, settings (None: the defaults), user, readable
READ_RULES = [
    rule_case("R0", "a bare tombstone reveals nothing", {"_id": "x", "_rev": "2-b", "_deleted": True}, None, CHW, True),
    rule_case("R1", "settings", {"_id": "settings"}, None, CHW, True),
    rule_case("R1", "branding", {"_id": "branding"}, None, CHW, True),
    rule_case("R1", "medic-client", {"_id": "_design/medic-client"}, None, CHW, True),
    rule_case("R1", "a form", {"_id": "form:x", "type": "form"}, None, CHW, True),
    rule_case("R1", "translations", {"_id": "t1", "type": "translations"}, None, CHW, True),
    rule_case("R2", "another design doc", {"_id": "_design/medic"}, None, CHW, False),
    rule_case("R3", "own user-settings", {"_id": "org.couchdb.user:u", "type": "user-settings"}, None, CHW, True),
    rule_case("R3", "another's user-settings", {"_id": "org.couchdb.user:v", "type": "user-settings"}, None, CHW, False),
    rule_case("R4", "own task", {"_id": "t", "type": "task", "user": "org.couchdb.user:u"}, None, CHW, True),
    rule_case("R4", "another's task", {"_id": "t", "type": "task", "user": "org.couchdb.user:v"}, None, CHW, False),
    rule_case("R5", "contact in scope", contact("h1", "a1"), None, CHW, True),
    rule_case("R5", "contact outside", contact("p2", "h2", "a2"), None, CHW, False),
    rule_case("R5", "a tombstone in scope", {**contact("h1", "a1"), "_deleted": True}, None, CHW, True),
    rule_case("R5", "deeper than the depth", contact("p1", "h1", "a1", type_="person"), settings(depth=1), CHW, False),
    rule_case("R5", "judged where its body puts it", contact("p2", "h1", "a1", type_="person"), None, CHW, True),
    rule_case("R6", "target of a contact in scope", {"_id": "g", "type": "target", "owner": "chw"}, None, CHW, True),
    rule_case("R6", "target of a contact outside", {"_id": "g", "type": "target", "owner": "p2"}, None, CHW, False),
    rule_case("R6", "a shortcode is no owner", {"_id": "g", "type": "target", "owner": "C001"}, None, CHW, False),
    rule_case("R7", "subject by shortcode in scope", report(patient_id="P001"), None, CHW, True),
    rule_case("R7", "subject by shortcode outside", report(patient_id="P002"), None, CHW, False),
    rule_case("R7", "subject by id in scope", report(patient_uuid="p1"), None, CHW, True),
    rule_case("R7", "place shortcode", report(place_id="HC01"), None, SUPERVISOR, True),
    rule_case("R7", "place shortcode outside", report(place_id="HC01"), None, CHW, False),
    rule_case("R7", "unallocated, allowed", {"_id": "sms", "type": "data_record", "fields": {}}, settings(unallocated=True), CHW, True),
    rule_case("R7", "unallocated, not allowed", {"_id": "sms", "type": "data_record", "fields": {}}, settings(unallocated=False), CHW, False),
    rule_case("R7", "needs_signoff: the submitter's lineage", report(submitter=(*FOREIGN_SUBMITTER, "hc", "d"), patient_uuid="p9", needs_signoff=True), None, SUPERVISOR, True),
    rule_case("R7", "no signoff: the subject alone", report(submitter=(*FOREIGN_SUBMITTER, "hc", "d"), patient_uuid="p9"), None, SUPERVISOR, False),
    rule_case("R7", "private, not about the user's own", report(patient_uuid="h1", submitter=FOREIGN_SUBMITTER, private=True), None, CHW, True),
    rule_case("R7", "private, submitter in scope", report(patient_uuid="a1", submitter=("h1",), private=True), None, CHW, True),
    rule_case("R7a", "private about the own facility", report(patient_uuid="a1", submitter=FOREIGN_SUBMITTER, private=True), None, CHW, False),
    rule_case("R7a", "private about the own contact, by shortcode", report(patient_id="C001", submitter=FOREIGN_SUBMITTER, private=True), None, CHW, False),
    rule_case("R7", "within the report_depth", report(patient_uuid="h1", submitter=("p2",)), settings(report_depth=1), CHW, True),
    rule_case("R7b", "deeper than the report_depth", report(patient_uuid="p1", submitter=("p2",)), settings(report_depth=1), CHW, False),
    rule_case("R7b", "deeper, submitted by the own contact", report(patient_uuid="p1"), settings(report_depth=1), CHW, True),
    rule_case("R8", "no kind", {"_id": "loose"}, None, CHW, False),
    rule_case("R8", "no string _id", {"_id": 5, "type": "person"}, None, CHW, False),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "doc", "s", "user", "expected"), READ_RULES)
def test_read_rules(
    rule: str, doc: dict[str, Any], s: AppSettings | None, user: UserCtx, expected: bool
) -> None:
    s = s or settings()
    decision = body_rule(doc, user, s, G, subjects(user, s, G))
    assert (decision.rule, decision.allowed) == (rule, expected)


def test_every_read_rule_has_rows_both_ways_where_it_can() -> None:
    """R1 and R0 only allow, R2, R7a and R8 only refuse; every other rule has both."""
    seen = {(p.values[0], p.values[-1]) for p in READ_RULES}
    one_way = {("R0", True), ("R1", True), ("R2", False), ("R7a", False), ("R8", False)}
    both = {(r, a) for r in ("R3", "R4", "R5", "R6", "R7", "R7b") for a in (True, False)}
    assert seen == one_way | both


@pytest.mark.parametrize(
    ("fields", "top", "expected_key"),
    [
        ({"patient_id": "P001", "place_id": "x"}, {}, "P001"),
        ({}, {"patient_id": "P002"}, "P002"),
        ({"place_id": "HC01", "patient_uuid": "p2"}, {}, "HC01"),
        ({}, {"place_id": "h1"}, "h1"),
        ({"patient_uuid": "p2"}, {}, "p2"),
        ({}, {}, "chw"),
    ],
)  # fmt: skip
def test_report_subject_priority(fields: dict[str, Any], top: dict[str, Any], expected_key: str) -> None:
    doc = {**report(**fields), **top}
    assert replication_keys(doc)[0] == expected_key


def test_report_subjects_resolve_shortcodes() -> None:
    assert readable(report(patient_id="P001")) and not readable(report(patient_id="P002"))
    assert readable(report(place_id="HC01"), user=UserCtx("s", ("chw",), ("hc",)))
    assert not readable(report(place_id="HC01"))


def test_unallocated_reports() -> None:
    doc = {"_id": "sms", "type": "data_record", "from": "+1", "fields": {}}
    assert replication_keys(doc) == (UNASSIGNED,)
    assert readable(doc, settings(unallocated=True)) and not readable(doc, settings(unallocated=False))


def test_needs_signoff_keys_the_submitter_lineage() -> None:
    doc = report(submitter=("p2", "h2", "a2", "hc", "d"), patient_uuid="p2", needs_signoff=True)
    assert set(replication_keys(doc)) == {"p2", "h2", "a2", "hc", "d"}
    supervisor = UserCtx("s", ("chw",), ("hc",))
    assert readable(doc, user=supervisor)
    plain = report(submitter=("p2", "h2", "a2", "hc", "d"), patient_uuid="p9")
    assert not readable(plain, user=supervisor)
    assert readable({**plain, "fields": {"patient_uuid": "p9", "needs_signoff": True}}, user=supervisor)


def test_report_depth() -> None:
    s = settings(report_depth=1)
    assert readable(report(patient_uuid="h1", submitter=("p2",)), s)  # depth 1
    assert not readable(report(patient_uuid="p1", submitter=("p2",)), s)  # depth 2 > 1
    assert readable(report(patient_uuid="p1"), s)  # submitted by the user's own contact
    sms = {"_id": "sms", "type": "data_record", "fields": {}}
    assert readable(sms, settings(report_depth=0, unallocated=True))  # _unassigned: no depth limit
    assert readable(report(patient_uuid="p1", submitter=("p2",)), settings())  # no report_depth


def test_private_reports() -> None:
    foreign = ("p2", "h2", "a2")
    assert not readable(report(patient_uuid="a1", submitter=foreign, private=True))
    assert not readable(report(patient_id="C001", submitter=foreign, private=True))
    assert readable(report(patient_uuid="a1", submitter=("h1",), private=True))  # submitter in scope
    assert readable(report(patient_uuid="h1", submitter=foreign, private=True))  # not the user's own
    assert readable(report(patient_uuid="a1", submitter=foreign))  # not private


# -- section 3: writing -------------------------------------------------------------------


def write(new: dict[str, Any], stored: dict[str, Any] | None = None, s: AppSettings | None = None,
          user: UserCtx = CHW) -> tuple[bool, str]:  # fmt: skip
    d = authorize_write(user, s or settings(), G, new, stored)
    return d.allowed, d.reason


@pytest.mark.parametrize(
    ("new", "stored", "permission"),
    [
        (report(patient_uuid="p1"), None, "can_create_records"),
        (report(patient_uuid="p1", x=2), report(patient_uuid="p1"), "can_update_reports"),
        ({"_id": "r", "_deleted": True}, report(patient_uuid="p1"), "can_delete_reports"),
        (contact("new", "h1", "a1", type_="person"), None, "can_create_people"),
        (contact("p1", "h1", "a1", type_="person", x=1), contact("p1", "h1", "a1", type_="person"), "can_update_people"),
        (contact("hx", "a1"), None, "can_create_places"),
        (contact("h1", "a1", x=1), contact("h1", "a1"), "can_update_places"),
        ({"_id": "p1", "_deleted": True}, contact("p1", "h1", "a1", type_="person"), "can_delete_contacts"),
        ({"_id": "tp", "type": "contact", "contact_type": "patient", "parent": lineage("typed_hh")}, None, "can_create_people"),
        ({"_id": "th", "type": "contact", "contact_type": "household", "parent": lineage("a1")}, None, "can_create_places"),
    ],
)  # fmt: skip
def test_each_kind_needs_its_permission(
    new: dict[str, Any], stored: dict[str, Any] | None, permission: str
) -> None:
    person_types = {"contact_types": [{"id": "patient", "person": True}, {"id": "household"}]}
    assert write(new, stored, settings(**person_types)) == (True, "")
    allowed, reason = write(
        new, stored, settings(perms=[p for p in ALL_PERMS if p != permission], **person_types)
    )
    assert not allowed and permission in reason


def decide(new: dict[str, Any], stored: dict[str, Any] | None = None, s: AppSettings | None = None,
           user: UserCtx = CHW, hidden: bool = False, graph: Any = G) -> tuple[bool, str, str]:  # fmt: skip
    d = authorize_write(user, s or settings(), graph, new, stored, hidden=hidden)
    return d.allowed, d.rule, d.error


ADMIN = UserCtx("root", ("_admin",), is_admin=True)
FOREIGN_REPORT = report("rf", patient_uuid="p2")
SIGNED_OFF = report(patient_uuid="p2", needs_signoff=True)  # readable through its lineage alone
P1 = contact("p1", "h1", "a1", type_="person", patient_id="P001")
STUB = {"_attachments": {"a.txt": {"stub": True, "digest": "md5-x"}}}
NO_EDIT = settings(perms=[p for p in ALL_PERMS if p != "can_edit"])
NO_CREATE = settings(perms=[p for p in ALL_PERMS if p != "can_create_records"])

# rule, note, new, stored, settings, user, hidden, (allowed, error)
WRITE_RULES = [
    rule_case("W1", "an admin writes settings", {"_id": "settings"}, None, None, ADMIN, False, (True, "forbidden")),
    rule_case("W2", "a _local doc in a body", {"_id": "_local/x"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "a design doc", {"_id": "_design/x"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "medic-client", {"_id": "_design/medic-client"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "a design doc shaped as a contact in scope", {"_id": "_design/x", "type": "person", "parent": lineage("h1", "a1")}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "settings", {"_id": "settings", "x": 1}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "a report under another user's user-settings id", {**report(patient_uuid="p1"), "_id": "org.couchdb.user:v", "contact_id": "p2"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "a contact under another user's user-settings id", contact("org.couchdb.user:v", "h1", "a1", type_="person"), None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "a form", {"_id": "form:x", "type": "form"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W2", "translations", {"_id": "tr", "type": "translations"}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W3", "create outside", FOREIGN_REPORT, None, None, CHW, False, (False, "forbidden")),
    rule_case("W3", "update outside", FOREIGN_REPORT, FOREIGN_REPORT, None, CHW, False, (False, "forbidden")),
    rule_case("W3", "delete a missing doc", {"_id": "rf", "_deleted": True}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W3", "delete a hidden tombstone", {"_id": "rf", "_deleted": True}, None, None, CHW, True, (False, "forbidden")),
    rule_case("W3", "move an own household out", contact("h1", "hc2", "d2"), contact("h1", "a1"), None, CHW, False, (False, "forbidden")),
    rule_case("W4", "pull a foreign doc into scope", report("rf", patient_uuid="p1"), FOREIGN_REPORT, None, CHW, False, (False, "conflict")),
    rule_case("W4", "move a foreign contact in", contact("p2", "h1", "a1", type_="person"), contact("p2", "h2", "a2", type_="person"), None, CHW, False, (False, "conflict")),
    rule_case("W4", "bring back a hidden tombstone", report("rf", patient_uuid="p1"), None, None, CHW, True, (False, "conflict")),
    rule_case("W4", "delete a foreign doc", {"_id": "rf", "_deleted": True}, FOREIGN_REPORT, None, CHW, False, (False, "forbidden")),
    rule_case("W5", "over a stored form", report("f1", patient_uuid="p1"), {"_id": "f1", "type": "form"}, None, CHW, False, (False, "forbidden")),
    rule_case("W6", "the own facility", contact("a1", "hc", "d", x=1), contact("a1", "hc", "d"), None, CHW, False, (False, "forbidden")),
    rule_case("W7", "a new purged field", {**report(patient_uuid="p1"), "purged": True}, None, None, CHW, False, (False, "forbidden")),
    rule_case("W7", "a stored purged field", report(patient_uuid="p1"), {**report(patient_uuid="p1"), "purged": True}, None, CHW, False, (False, "forbidden")),
    rule_case("W8", "the own facility_id", {**OWN_SETTINGS, "facility_id": "hc"}, OWN_SETTINGS, None, CHW, False, (False, "forbidden")),
    rule_case("W8", "the own roles", {**OWN_SETTINGS, "roles": ["boss"]}, OWN_SETTINGS, None, CHW, False, (False, "forbidden")),
    rule_case("W9", "a contact turned report", report("p1", patient_uuid="p1"), P1, None, CHW, False, (False, "forbidden")),
    rule_case("W9", "a taken shortcode", {**P1, "patient_id": "P002"}, P1, None, CHW, False, (False, "forbidden")),
    rule_case("W9", "another contact's id as shortcode", {**P1, "patient_id": "h2"}, P1, None, CHW, False, (False, "forbidden")),
    rule_case("W10", "a reserved id", contact("org.couchdb.user:u", "h1", "a1", type_="person"), None, None, CHW, False, (False, "forbidden")),
    rule_case("W10", "another contact's shortcode as id", contact("P002", "h1", "a1", type_="person"), None, None, CHW, False, (False, "forbidden")),
    rule_case("W11", "a foreign submitter", report("rs", submitter=FOREIGN_SUBMITTER, patient_uuid="p1"), None, None, CHW, False, (False, "forbidden")),
    rule_case("W11", "a forged lineage", report("rs", submitter=("chw", "a1", "hc2", "d2"), patient_uuid="p1"), None, None, CHW, False, (False, "forbidden")),
    rule_case("W11", "a subject outside", SIGNED_OFF, None, None, CHW, False, (False, "forbidden")),
    rule_case("W12", "no can_edit", report(patient_uuid="p1"), None, NO_EDIT, CHW, False, (False, "forbidden")),
    rule_case("W13", "no can_create_records", report(patient_uuid="p1"), None, NO_CREATE, CHW, False, (False, "forbidden")),
    rule_case("W14", "a stub of nothing stored", {**report(patient_uuid="p1"), **STUB}, None, None, CHW, False, (False, "missing_stub")),
    rule_case("W14", "a stub of another digest", {**report(patient_uuid="p1"), **STUB}, {**report(patient_uuid="p1"), "_attachments": {"a.txt": {"digest": "md5-y"}}}, None, CHW, False, (False, "missing_stub")),
    rule_case("allowed", "a report in scope", report(patient_uuid="p1"), None, None, CHW, False, (True, "forbidden")),
    rule_case("allowed", "a stub of the stored attachment", {**report(patient_uuid="p1"), **STUB}, {**report(patient_uuid="p1"), "_attachments": {"a.txt": {"digest": "md5-x"}}}, None, CHW, False, (True, "forbidden")),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "new", "stored", "s", "user", "hidden", "expected"), WRITE_RULES)
def test_write_rules(
    rule: str,
    new: dict[str, Any],
    stored: dict[str, Any] | None,
    s: AppSettings | None,
    user: UserCtx,
    hidden: bool,
    expected: tuple[bool, str],
) -> None:
    d = authorize_write(user, s or settings(), G, new, stored, hidden=hidden)
    assert (d.rule, d.allowed, d.error) == (rule, *expected)
    assert d.status == {"forbidden": 403, "conflict": 409, "missing_stub": 412}[d.error]


def test_every_write_rule_has_a_row() -> None:
    assert {p.values[0] for p in WRITE_RULES} == {f"W{i}" for i in range(1, 15)} | {"allowed"}


def test_stored_purged_and_scope_of_both_versions() -> None:
    assert decide(report(patient_uuid="p1"), {**report(patient_uuid="p1"), "purged": True})[:2] == (
        False,
        "W7",
    )
    assert decide(report(patient_uuid="p2"))[:2] == (False, "W3")  # new version outside
    # Stored outside, new version in scope: the conflict a made-up `_rev` on a missing doc gets.
    assert decide(report(patient_uuid="p1"), report(patient_uuid="p2")) == (False, "W4", "conflict")
    moved_in = contact("p2", "h1", "a1", type_="person")
    assert decide(moved_in, contact("p2", "h2", "a2", type_="person")) == (False, "W4", "conflict")


def test_no_answer_depends_on_a_foreign_doc_existing() -> None:
    """No existence oracle: a write about a doc outside the scope gets the answer the same
    write gets for a missing doc (`forbidden` W3/W4 with one reason; `conflict` where a
    missing doc with a made-up `_rev` would conflict upstream), and no reason that depends
    on the stored doc (permissions, purged) is given before scope."""
    foreign = report("rf", patient_uuid="p2")
    no_update = settings(perms=[p for p in ALL_PERMS if p != "can_update_reports"])
    forbidden = [
        (report("rf", patient_uuid="p2"), None, None),  # create outside
        (report("rf", patient_uuid="p2"), foreign, None),  # update outside
        ({"_id": "rf", "_deleted": True}, foreign, None),  # delete a foreign doc
        ({"_id": "rf", "_deleted": True}, None, None),  # delete a missing doc
    ]
    for new, stored, s in forbidden:
        assert write(new, stored, s) == (False, OUTSIDE.reason), (new, stored)
    conflicts = [
        (report("rf", patient_uuid="p1"), foreign, None),  # pull a foreign doc into scope
        (report("rf", patient_uuid="p1"), foreign, no_update),  # no update permission either
        (report("rf", patient_uuid="p1"), {**foreign, "purged": True}, None),
    ]
    for new, stored, s in conflicts:
        assert decide(new, stored, s) == (False, "W4", "conflict"), (new, stored)
    # A deleted doc whose last version was outside the scope is not the user's to bring back.
    assert decide(report("rf", patient_uuid="p1"), None, hidden=True) == (False, "W4", "conflict")
    assert decide({"_id": "rf", "_deleted": True}, None, hidden=True)[:2] == (False, "W3")
    # A tombstone that carries an in-scope body, with nothing stored, is judged by it.
    assert write({**report("rf", patient_uuid="p1"), "_deleted": True}, None)[0]


def test_admins_may_write_anything() -> None:
    assert write({"_id": "settings"}, None, user=UserCtx("root", ("_admin",), is_admin=True))[0]


def test_same_request_rule_household_people_reports() -> None:
    docs = [
        contact("hn", "a1", "hc"),
        contact("pn", "hn", "a1", type_="person"),
        report("rn", patient_id="pn"),
        report("rx", patient_uuid="p2"),
    ]
    decisions = authorize_batch(CHW, settings(), G, docs, {})
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [authorize_write(CHW, settings(), G, d, None).allowed for d in docs] == [True, False, False, False]


def test_a_refused_contact_lends_no_scope_to_the_batch() -> None:
    # Moving a foreign household into one's area is refused, and so is a report relying on it.
    docs = [contact("h2", "a1", "hc"), report("r2", patient_uuid="h2")]
    stored = {"h2": contact("h2", "a2", "hc")}
    assert [d.allowed for d in authorize_batch(CHW, settings(), G, docs, stored)] == [False, False]


# -- review follow-ups: depth edge cases, own rights, own id, design docs -------------------


@pytest.mark.parametrize("bad", ["2", 2.0, -5, None, True, [2], {"d": 2}])
def test_malformed_depths_fail_closed(bad: object) -> None:
    """A typo in `replication_depth` must never widen what users replicate: read as 0."""
    doc = {"settings": {"replication_depth": [{"role": "chw", "depth": bad, "report_depth": bad}]}}
    s = AppSettings.from_doc(doc)
    assert replication_depths(CHW, s) == (0, 0)
    assert set(subjects(CHW, s, G).contacts) == {"a1"}
    assert len(s.problems) == 2 and "invalid" in s.problems[0]
    # Next to a valid entry of another role, the invalid one neither widens nor narrows.
    doc["settings"]["replication_depth"].append({"role": "sup", "depth": 2, "report_depth": 1})
    both = AppSettings.from_doc(doc)
    assert replication_depths(UserCtx("u", ("chw", "sup")), both) == (2, 1)


def test_absent_and_minus_one_depths_are_unlimited() -> None:
    doc = {
        "settings": {"replication_depth": [{"role": "chw"}, {"role": "sup", "depth": -1, "report_depth": -1}]}
    }
    s = AppSettings.from_doc(doc)
    assert replication_depths(CHW, s) == (None, None) and s.problems == ()
    assert replication_depths(UserCtx("u", ("sup",)), s) == (None, None)


def test_depth_tie_takes_the_largest_report_depth_absent_counting_largest() -> None:
    doc = {"settings": {"replication_depth": [
        {"role": "a", "depth": 2, "report_depth": 0}, {"role": "b", "depth": 2}]}}  # fmt: skip
    s = AppSettings.from_doc(doc)
    assert replication_depths(UserCtx("u", ("a", "b")), s) == (2, None)
    assert replication_depths(UserCtx("u", ("b", "a")), s) == (2, None)
    assert replication_depths(UserCtx("u", ("a",)), s) == (2, 0)


def test_report_depth_needs_all_contact_keys_deep_not_any() -> None:
    """A needs_signoff report is keyed by its subject and its submitter's lineage: with a
    report_depth it is hidden only when every key in scope is deeper than the limit."""
    s = settings(report_depth=1)
    shallow_submitter = report(submitter=("h1", "a1", "hc", "d"), patient_uuid="p1", needs_signoff=True)
    assert set(replication_keys(shallow_submitter)) == {"p1", "h1", "a1", "hc", "d"}
    assert readable(shallow_submitter, s)  # p1 is at 2 > 1, but h1 (1) and a1 (0) are not
    # The same report without needs_signoff is keyed by its deep subject alone.
    assert not readable(report(submitter=("h1", "a1", "hc", "d"), patient_uuid="p1"), s)
    deep_both = report(submitter=("gc", "p1"), patient_uuid="p1", needs_signoff=True)
    assert not readable(deep_both, s)  # p1 (2) and gc (3): all deeper than 1
    assert readable(deep_both, settings(report_depth=2))


def test_admins_hold_every_permission_but_not_its_negation() -> None:
    s = settings(perms=[])
    for admin in (UserCtx("a", ("_admin",)), UserCtx("a", (), is_admin=True)):
        assert has_permission(admin, s, "can_delete_reports")
        assert not has_permission(admin, s, "!can_delete_reports")
    assert has_permission(CHW, s, "!can_delete_reports")


@pytest.mark.parametrize(
    "new",
    [{"_id": "_design/x", "type": "person", "parent": lineage("h1", "a1")},
     {"_id": "_design/x", "type": "data_record", "fields": {"patient_uuid": "p1"}},
     {"_id": "_design/medic-client", "views": {}}],
)  # fmt: skip
def test_design_docs_are_refused_as_design_docs_not_for_scope(new: dict[str, Any]) -> None:
    allowed, reason = write(new)
    assert not allowed and "design" in reason and reason != OUTSIDE.reason


OWN = {"_id": "org.couchdb.user:u", "type": "user-settings", "name": "u", "facility_id": "a1",
       "contact_id": "chw"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "allowed"),
    [({"language": "fr"}, True), ({"facility_id": "hc"}, False), ({"facility_id": ["a1", "a2"]}, False),
     ({"contact_id": "p2"}, False), ({"roles": ["chw", "boss"]}, False), ({"facility_id": None}, False),
     ({"_deleted": True}, False)],
)  # fmt: skip
def test_own_user_settings_cannot_change_own_rights(change: dict[str, Any], allowed: bool) -> None:
    new = {**OWN, **change, "_rev": "1-a"}
    if change.get("_deleted"):
        new = {"_id": OWN["_id"], "_rev": "1-a", "_deleted": True}
    ok, reason = write(new, OWN)
    assert ok is allowed, reason
    if not allowed:
        assert "facility, contact or roles" in reason


def test_own_user_settings_created_without_rights_only() -> None:
    bare = {"_id": OWN["_id"], "type": "user-settings", "name": "u"}
    assert write(bare, None)[0]
    assert not write({**bare, "facility_id": "hc"}, None)[0]


def test_the_own_id_places_no_contact_outside_the_tree() -> None:
    """`org.couchdb.user:<name>` keys the user's own settings and tasks; a contact with
    that id is in scope only where the tree puts it."""
    elsewhere = {"_id": "org.couchdb.user:u", "type": "person", "parent": lineage("h2", "a2", "hc", "d")}
    assert not readable(elsewhere)
    ok, reason = write(elsewhere, OWN)
    assert (ok, reason) == (False, OUTSIDE.reason)
    ok, reason = write(elsewhere, None)
    assert (ok, reason) == (False, OUTSIDE.reason)
    inside = {**elsewhere, "parent": lineage("h1", "a1", "hc", "d")}
    assert is_readable(inside, CHW, settings(), Graph([*TREE, inside]))
    assert readable({"_id": "t", "type": "task", "user": "org.couchdb.user:u"})
    assert not readable({"_id": "org.couchdb.user:u", "type": "target", "owner": "p2"})


# -- key spaces: no value a user writes names what the tree does not give them -------------

FOREIGN = [
    contact("d2", type_="district_hospital"),
    contact("hc2", "d2", type_="health_center"),
    contact("a3", "hc2", "d2"),
    contact("p9", "a3", "hc2", "d2", type_="person", patient_id="P009"),
]


def tree(*extra: dict[str, Any]) -> Graph:
    return Graph([*TREE, *FOREIGN, *extra])


def reads(doc: dict[str, Any], graph: Graph, user: UserCtx = CHW, s: AppSettings | None = None) -> bool:
    return is_readable(doc, user, s or settings(), graph)


@pytest.mark.parametrize(
    ("planted", "target"),
    [
        # a shortcode equal to a foreign contact's id: reports naming that id stay its own
        ({"patient_id": "hc2"}, report("rh", submitter=("p9",), patient_id="hc2")),
        ({"place_id": "a3"}, report("ra", submitter=("p9",), place_id="a3")),
        # a shortcode equal to another user's doc id or `_unassigned` names nothing
        ({"patient_id": "org.couchdb.user:v"}, {"_id": "t", "type": "task", "user": "org.couchdb.user:v"}),
        ({"patient_id": "org.couchdb.user:v"}, report("ru", submitter=("p9",), patient_id="org.couchdb.user:v")),
        ({"patient_id": UNASSIGNED}, {"_id": "sms", "type": "data_record", "fields": {}}),
        ({"patient_id": UNASSIGNED}, report("r_", submitter=("p9",), patient_id=UNASSIGNED)),
        # a shortcode never stands for a target's owner or a contact's own id
        ({"patient_id": "p9"}, {"_id": "g", "type": "target", "owner": "p9"}),
        ({"patient_id": "p9"}, contact("p9", "a3", "hc2", "d2", type_="person")),
    ],
)  # fmt: skip
def test_a_planted_shortcode_names_nothing_foreign(planted: dict[str, Any], target: dict[str, Any]) -> None:
    plant = contact("mine", "h1", "a1", type_="person", **planted)
    assert not reads(target, tree(plant))
    # ...and the user cannot plant it in the first place (W9: taken), but for a reserved
    # value, which is no shortcode at all (it names nothing).
    allowed, rule, _ = decide(plant, graph=tree())
    code = planted.get("patient_id") or planted.get("place_id")
    assert (allowed, rule) == ((True, "allowed") if code.startswith(("_", "org.")) else (False, "W9"))
    # A contact may keep or drop the shortcode it has, never take another.
    p1 = contact("p1", "h1", "a1", type_="person", patient_id="P001")
    assert decide({**p1, "x": 1}, p1)[1] == "allowed"
    assert decide({k: v for k, v in p1.items() if k != "patient_id"}, p1)[1] == "allowed"
    assert decide({**p1, "patient_id": "P002"}, p1)[1] == "W9"  # p2's
    assert decide({**p1, "patient_id": "h2"}, p1)[1] == "W9"  # an id
    assert decide(contact("fresh", "h1", "a1", type_="person", patient_id="P777"))[1] == "allowed"


def test_a_contact_whose_id_is_a_foreign_shortcode_takes_nothing() -> None:
    """`_id` "P009" is not p9's shortcode P009: reports by shortcode keep naming p9."""
    plant = contact("P009", "h1", "a1", type_="person")
    by_code = report("rc", submitter=("p9",), patient_id="P009")
    assert not reads(by_code, tree(plant))
    # An id that is also another contact's shortcode names nobody, even for p9's own user
    # (no leak, at worst a loss); offline users cannot make such a collision (W10).
    assert not reads(by_code, tree(plant), user=UserCtx("w", ("chw",), ("a3",), "p9"))
    assert reads(by_code, tree(), user=UserCtx("w", ("chw",), ("a3",), "p9"))
    assert decide(plant, graph=tree())[:2] == (False, "W10")


def test_shortcodes_resolve_only_when_held_by_exactly_one_live_contact() -> None:
    by_code = report("rc", patient_id="P001")
    assert reads(by_code, tree())
    twin = contact("twin", "a3", "hc2", "d2", type_="person", patient_id="P001")
    assert not reads(by_code, tree(twin))  # held twice: names nobody
    gone = {**contact("p1", "h1", "a1", type_="person", patient_id="P001"), "_deleted": True}
    assert not reads(by_code, Graph([*[d for d in TREE if d["_id"] != "p1"], gone]))  # deleted holder
    # Ids are another key space: the same report by id still names p1 while it lives or not.
    assert reads(report("ri", patient_uuid="p1"), Graph([*[d for d in TREE if d["_id"] != "p1"], gone]))


def test_tasks_only_for_their_own_user_and_user_settings_only_own() -> None:
    as_contact = contact("org.couchdb.user:v", "h1", "a1", type_="person")  # a contact with v's doc id
    graph = tree(as_contact)
    assert reads(as_contact, graph)  # in scope where the tree puts it
    assert not reads({"_id": "t", "type": "task", "user": "org.couchdb.user:v"}, graph)
    assert not reads({"_id": "org.couchdb.user:v", "type": "user-settings"}, graph)
    assert decide(as_contact)[:2] == (False, "W2")  # another user's doc id is not the user's to write
    assert decide({**as_contact, "_id": "org.couchdb.user:u"})[:2] == (False, "W10")  # nor a contact's


# -- moves: a contact's new version is judged where it goes ----------------------------------


@pytest.mark.parametrize(
    "moved",
    [
        contact("h1", "hc2", "d2"),  # own household under a foreign health center
        contact("h1"),  # detached from the tree
        contact("p1", "a3", "hc2", type_="person", patient_id="P001"),  # a person out
        contact("h1", "p1", "h1", "a1"),  # under its own child: a loop reaching no facility
    ],
)  # fmt: skip
def test_moving_own_contacts_out_is_refused_where_they_go(moved: dict[str, Any]) -> None:
    stored = next(d for d in TREE if d["_id"] == moved["_id"])
    assert decide(moved, stored)[:2] == (False, "W3")
    decisions = authorize_batch(
        CHW, settings(), G, [moved, report("r", patient_uuid="h1")], {moved["_id"]: stored}
    )
    assert decisions[0].rule == "W3"  # refused as the move it is, never judged at its old place
    assert decisions[1].allowed  # a refused move lends nothing, and takes nothing away


def test_a_refused_move_is_final_in_a_batch() -> None:
    """The batch overlay drops a refused contact and judges the others again; a refused
    one is never judged again (the old bug: judged without its own move, it passed)."""
    out = contact("h1", "hc2", "d2")
    person_below = contact("p1", "h1", "a1", type_="person", patient_id="P001", x=1)
    stored = {"h1": contact("h1", "a1"), "p1": contact("p1", "h1", "a1", type_="person", patient_id="P001")}
    decisions = authorize_batch(CHW, settings(), G, [out, person_below], stored)
    # p1 was judged below the moved h1 (outside): refusals are final, so it stays refused
    # (safe; alone it is allowed), and h1 was never judged at its old place.
    assert [(d.allowed, d.rule) for d in decisions] == [(False, "W3"), (False, "W3")]
    assert authorize_batch(CHW, settings(), G, [person_below], stored)[0].allowed


def test_an_edit_naming_a_rev_of_no_live_doc_is_a_conflict() -> None:
    """W15: a made-up `_rev` on a missing (or deleted) doc is CouchDB's conflict, as W4
    answers for a doc outside the scope; CouchDB 3.4 itself wrote such a doc."""
    mine = report("r_new", submitter=("chw", "a1"), patient_uuid="p1")
    allowed = authorize_batch(CHW, settings(), G, [{**mine, "_rev": "1-abc"}], {"r_new": None})[0]
    assert allowed.allowed
    decision = made_up_rev({**mine, "_rev": "1-abc"}, None, allowed)
    assert (decision.allowed, decision.rule, decision.status, decision.error) == (
        False,
        "W15",
        409,
        "conflict",
    )
    assert made_up_rev(mine, None, allowed) is allowed  # no `_rev`: a create
    assert made_up_rev({**mine, "_rev": "1-abc"}, {**mine, "_rev": "1-abc"}, allowed) is allowed  # stored
    assert made_up_rev({**mine, "_rev": "1-abc"}, None, OUTSIDE) is OUTSIDE  # a refusal stands


# -- the submitter of a report ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("submitter", "signoff", "rule"),
    [
        (("chw", "a1", "hc", "d"), False, "allowed"),
        (("p2", "h2", "a2"), False, "W11"),  # another area's contact
        (("p9", "a3", "hc2"), True, "W11"),
        ((), False, "W11"),  # no submitter at all
        (("chw", "a1", "hc2", "d2"), True, "W11"),  # own submitter, lineage into a foreign area
        (("chw", "a1", "hc", "d"), True, "allowed"),  # the real lineage: up to the supervisors
    ],
)  # fmt: skip
def test_a_report_names_a_submitter_of_the_users_area(
    submitter: tuple[str, ...], signoff: bool, rule: str
) -> None:
    doc = report("rs", submitter=submitter, patient_uuid="p1", needs_signoff=signoff)
    if not submitter:
        doc.pop("contact")
    assert decide(doc)[1] == rule
    # An edit that keeps the stored submitter is not judged on it again.
    if rule == "W11" and submitter:
        assert decide({**doc, "x": 1}, doc)[1] == "allowed"


def test_the_users_own_contact_may_submit_from_outside_the_facility() -> None:
    user = UserCtx("u", ("chw",), ("h1",), "chw")  # own contact in a1, facility h1 below it
    assert decide(report("ro", submitter=("chw", "a1"), patient_uuid="p1"), user=user)[1] == "allowed"


# -- the two ways to know a scope agree --------------------------------------------------------


def test_walking_up_agrees_with_walking_down() -> None:
    graph = tree(contact("loop1", "loop2"), contact("loop2", "loop1"), contact("orphan", "nowhere"))
    for depth in (None, 0, 1, 2, 3):
        for user in (CHW, UserCtx("s", ("chw",), ("hc", "a1", "loop1")), UserCtx("n", ("chw",), ())):
            s = settings(depth=depth)
            down: Subjects = subjects(user, s, graph)
            up = WalkScope(user, s, graph)
            for contact_id in [*graph.nodes, "nowhere", *user.facility_ids]:
                assert up.depth(contact_id) == down.depth(contact_id), (depth, user, contact_id)
