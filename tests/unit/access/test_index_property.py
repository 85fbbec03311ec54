"""The scope index agrees with a naive recomputation of every user's readable set, and an
incremental client following `changes_since` never misses a doc it may read (no gaps),
after random creates, updates, moves, deletes, settings changes and user changes.

The oracle (`Oracle`) is written here from the read rules of docs/design.md alone and
shares no code with `proxy.access`: it walks each contact up through the stored docs'
`parent` ids to find its distance below a facility, and reads every doc's fields itself.
Shortcodes are drawn from a pool that includes contact ids, user doc ids and
`_unassigned`, so planted and colliding keys are exercised all the time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from proxy.access.config import AppSettings, UserCtx
from proxy.access.read import scope_inputs
from proxy.access.scope_index import ScopeIndex
from proxy.users_at_risk import Counted, still_exact

PLACES = ["d1", "d2", "hc1", "hc2", "a1", "a2", "a3", "h1", "h2", "h3"]
# A person may even carry a user's own doc id: it is then in scope only through the tree.
PEOPLE = ["p1", "p2", "p3", "p4", "chw", "org.couchdb.user:u2"]
TYPED = ["tc_house", "tc_patient"]  # `type: contact` docs; their contact_type varies
REPORTS = ["r1", "r2", "r3", "r4", "r5"]
OTHERS = ["t1", "g1", "org.couchdb.user:u1", "org.couchdb.user:u2"]
GLOBALS = ["resources", "form:visit", "_design/medic-client", "_design/other"]
CONTACTS = PLACES + PEOPLE + TYPED
SHORTCODES = ["S1", "S2", "S3"]
# What a contact's shortcode may be: codes, other contacts' ids, reserved values.
CODE_POOL = [*SHORTCODES, "S1", "p1", "h1", "a3", "org.couchdb.user:u1", "_unassigned"]
USERS = ["u1", "u2", "u3"]
ROLES = ["chw", "sup", "clerk"]
CONTACT_TYPES = ["household", "patient", "unknown_type"]
DEPTHS = [None, -1, 0, 1, 2, 3]

# -- the oracle: docs/design.md 1-2, read literally ---------------------------------------

GLOBAL_IDS = {"settings", "resources", "branding", "partners", "service-worker-meta", "zscore-charts",
              "privacy-policies", "_design/medic-client"}  # fmt: skip
PLACE_TYPES = {"district_hospital", "health_center", "clinic"}


def reserved(value: str) -> bool:
    return value.startswith("_") or value.startswith("org.couchdb.user:")


def is_contact(body: dict[str, Any]) -> bool:
    t = body.get("type")
    return t in PLACE_TYPES or t == "person" or (t == "contact" and isinstance(body.get("contact_type"), str))


def lineage(node: Any) -> list[str]:
    ids = []
    while isinstance(node, dict):
        if isinstance(node.get("_id"), str):
            ids.append(node["_id"])
        node = node.get("parent")
    return ids


class Oracle:
    def __init__(self, bodies: dict[str, dict[str, Any]], deleted: set[str], app: dict[str, Any]) -> None:
        self.bodies = bodies  # the last live body of every doc, deleted ones included
        self.deleted = deleted
        self.app = app

    def parent(self, contact_id: str) -> str | None:
        body = self.bodies.get(contact_id)
        if body is None or not is_contact(body):
            return None
        ids = lineage(body.get("parent"))
        return ids[0] if ids else None

    def distance(self, contact_id: str, facility: str) -> int | None:
        """How far below `facility` the contact sits, walking up parent by parent."""
        current: str | None = contact_id
        seen: set[str] = set()
        steps = 0
        while current is not None and current not in seen:
            if current == facility:
                return steps
            seen.add(current)
            current = self.parent(current)
            steps += 1
        return None

    def depths(self, roles: tuple[str, ...]) -> tuple[int | None, int | None]:
        rules = [r for r in self.app["rules"] if r["role"] in roles]
        if not rules:
            return None, None

        def size(v: int | None) -> float:
            return float("inf") if v is None or v == -1 else v

        best = max(rules, key=lambda r: (size(r.get("depth")), size(r.get("report_depth"))))
        depth, report = best.get("depth"), best.get("report_depth")
        return (None if depth in (None, -1) else depth), (None if report in (None, -1) else report)

    def subjects(self, user: UserCtx) -> dict[str, int]:
        """Contact id -> distance below the nearest facility, deleted contacts included."""
        limit, _ = self.depths(user.roles)
        found: dict[str, int] = {}
        candidates = [c for c, b in self.bodies.items() if is_contact(b)] + list(user.facility_ids)
        for contact_id in candidates:
            ds = [d for f in user.facility_ids if (d := self.distance(contact_id, f)) is not None]
            if ds and (limit is None or min(ds) <= limit):
                found[contact_id] = min(ds)
        return found

    def code_of(self, contact_id: str) -> str | None:
        body = self.bodies[contact_id]
        code = body.get("patient_id") or body.get("place_id")
        return code if isinstance(code, str) and code and not reserved(code) else None

    def names(self, value: str, code_field: bool) -> str | None:
        """The one contact a report's subject value names (see `resolve`), or None."""
        if reserved(value):
            return None
        contacts = [c for c, b in self.bodies.items() if is_contact(b)]
        by_id = value in contacts
        if not code_field:
            return value if by_id else None
        holders = {c for c in contacts if self.code_of(c) == value}
        answering = holders | ({value} if by_id else set())
        if len(answering) != 1:
            return None
        (found,) = answering
        return None if found in holders and found in self.deleted else found

    def readable(self, user: UserCtx) -> set[str]:
        tree = self.subjects(user)
        own = f"org.couchdb.user:{user.name}"
        unassigned = self.app["unallocated"] and any(r in self.app["unallocated_roles"] for r in user.roles)
        _, report_depth = self.depths(user.roles)
        out = set()
        for doc_id, body in self.bodies.items():
            t = body.get("type")
            if doc_id in GLOBAL_IDS or t in {"form", "translations"}:
                out.add(doc_id)
                continue
            if doc_id.startswith("_design/"):
                continue
            if t == "user-settings":
                if doc_id == own:
                    out.add(doc_id)
                continue
            if is_contact(body):
                if doc_id in tree:
                    out.add(doc_id)
            elif t == "task":
                if body.get("user") == own:
                    out.add(doc_id)
            elif t == "target":
                if body.get("owner") in tree:
                    out.add(doc_id)
            elif t == "data_record" and self.report_readable(body, user, tree, unassigned, report_depth):
                out.add(doc_id)
        return out

    def report_readable(self, body: dict[str, Any], user: UserCtx, tree: dict[str, int], unassigned: bool,
                        report_depth: int | None) -> bool:  # fmt: skip
        fields = body.get("fields") or {}
        submitter_line = lineage(body.get("contact"))
        subject: str | None = None
        code_field = False
        for value, is_code_field in ((fields.get("patient_id"), True), (body.get("patient_id"), True),
                                     (fields.get("place_id"), True), (body.get("place_id"), True),
                                     (fields.get("patient_uuid"), False),
                                     (submitter_line[0] if submitter_line else None, False)):  # fmt: skip
            if isinstance(value, str) and value:
                subject, code_field = value, is_code_field
                break
        named = self.names(subject, code_field) if subject is not None else None
        contacts = {c for c in (named, *(submitter_line if fields.get("needs_signoff") else [])) if c in tree}
        unallocated = subject is None and unassigned
        if not contacts and not unallocated:
            return False
        submitter = submitter_line[0] if submitter_line else None
        own_subject = named is not None and named in {*user.facility_ids, user.contact_id}
        if fields.get("private") and own_subject and submitter not in tree:
            return False
        too_deep = report_depth is not None and all(tree[k] > report_depth for k in contacts)
        if too_deep and not unallocated:
            return submitter is not None and submitter == user.contact_id
        return True


# -- the machine --------------------------------------------------------------------------


class IndexMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.index = ScopeIndex()
        self.index.set_person_types(frozenset({"person", "patient"}))
        self.bodies: dict[str, dict[str, Any]] = {}  # last live body of every doc ever written
        self.revs: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.counter = 0
        self.app: dict[str, Any] = {"rules": [], "unallocated": False, "unallocated_roles": ["sup"]}
        self.users = {u: UserCtx(u, ("chw",), ("a1",), "chw") for u in USERS}
        self.clients: dict[str, dict[str, str]] = {u: {} for u in USERS}
        # Devices that pull only now and then (rule `device_pulls`), from where they stopped.
        self.devices: dict[str, dict[str, Any]] = {
            u: {"at": 0, "ctx": UserCtx(u), "print": None, "held": set()} for u in USERS
        }
        self.cursor = dict.fromkeys(USERS, 0)
        self.prints: dict[str, object] = {}
        self._app_for: Any = None
        self.counted: dict[str, Counted] = {}  # the users-at-risk counts, as last made

    def app_settings(self) -> AppSettings:
        """The same object until the settings change, as the service keeps it (the index
        caches per settings object, and that cache must be exercised too)."""
        if self._app_for != self.app:
            self._app_for = {**self.app, "rules": list(self.app["rules"])}
            self._app_obj = AppSettings.from_doc({"settings": {
                "roles": {r: {"offline": True} for r in ROLES},
                "permissions": {"can_view_unallocated_data_records": self.app["unallocated_roles"]},
                "replication_depth": self.app["rules"],
                "district_admins_access_unallocated_messages": self.app["unallocated"],
                "contact_types": [{"id": "patient", "person": True}, {"id": "household"}],
            }})  # fmt: skip
        return self._app_obj

    def write(self, doc: dict[str, Any]) -> None:
        self.counter += 1
        doc["_rev"] = f"{self.counter}-x"
        self.bodies[doc["_id"]] = doc
        self.revs[doc["_id"]] = doc["_rev"]
        self.deleted.discard(doc["_id"])
        self.index.apply(dict(doc), self.counter)

    @rule(doc_id=st.sampled_from(PLACES + PEOPLE), parent=st.sampled_from([*PLACES, *TYPED, None]),
          grandparent=st.sampled_from([*PLACES, None]), code=st.sampled_from([*CODE_POOL, None]))  # fmt: skip
    def upsert_contact(
        self, doc_id: str, parent: str | None, grandparent: str | None, code: str | None
    ) -> None:
        doc: dict[str, Any] = {"_id": doc_id, "type": "person" if doc_id in PEOPLE else "clinic"}
        if parent and parent != doc_id:
            # A lineage may be stale above the parent: only the nearest id places a contact.
            doc["parent"] = {"_id": parent, **({"parent": {"_id": grandparent}} if grandparent else {})}
        if code:
            doc["patient_id" if doc_id in PEOPLE else "place_id"] = code
        self.write(doc)

    @rule(doc_id=st.sampled_from(TYPED), contact_type=st.sampled_from(CONTACT_TYPES),
          parent=st.sampled_from([*PLACES, *TYPED, None]))  # fmt: skip
    def upsert_typed_contact(self, doc_id: str, contact_type: str, parent: str | None) -> None:
        doc: dict[str, Any] = {"_id": doc_id, "type": "contact", "contact_type": contact_type}
        if parent and parent != doc_id:
            doc["parent"] = {"_id": parent}
        self.write(doc)

    @rule(doc_id=st.sampled_from(REPORTS), subject=st.none() | st.sampled_from([*CONTACTS, *CODE_POOL]),
          submitter=st.none() | st.sampled_from([*PEOPLE, *TYPED]), signoff=st.booleans(), private=st.booleans(),
          where=st.sampled_from(["patient_uuid", "patient_id", "place_id", "top_patient_id"]))  # fmt: skip
    def upsert_report(self, doc_id: str, subject: str | None, submitter: str | None, signoff: bool,
                      private: bool, where: str) -> None:  # fmt: skip
        fields: dict[str, Any] = {"needs_signoff": signoff, "private": private}
        doc: dict[str, Any] = {"_id": doc_id, "type": "data_record", "fields": fields}
        if subject and where == "top_patient_id":
            doc["patient_id"] = subject
        elif subject:
            fields[where] = subject
        if submitter:
            doc["contact"] = {"_id": submitter, "parent": {"_id": "a1", "parent": {"_id": "hc1"}}}
        self.write(doc)

    @rule(doc_id=st.sampled_from(OTHERS), ref=st.sampled_from([*CONTACTS, "org.couchdb.user:u1"]))
    def upsert_other(self, doc_id: str, ref: str) -> None:
        if doc_id.startswith("org.couchdb.user:"):
            self.write({"_id": doc_id, "type": "user-settings"})
        elif doc_id == "t1":
            self.write({"_id": doc_id, "type": "task", "user": ref})
        else:
            self.write({"_id": doc_id, "type": "target", "owner": ref})

    @rule(doc_id=st.sampled_from(CONTACTS), doc_type=st.sampled_from(["note", "contact", "data_record"]))
    def retype_contact(self, doc_id: str, doc_type: str) -> None:
        """A contact's doc rewritten as something that is no contact (a `type: contact`
        without `contact_type`, an unassigned report): its id names nobody any more, and
        the contacts below it hang from nothing."""
        self.write({"_id": doc_id, "type": doc_type})

    @rule(doc_id=st.sampled_from(GLOBALS))
    def upsert_global(self, doc_id: str) -> None:
        self.write({"_id": doc_id, **({"type": "form"} if doc_id.startswith("form:") else {})})

    @rule(doc_id=st.sampled_from(CONTACTS + REPORTS + OTHERS + GLOBALS))
    def delete(self, doc_id: str) -> None:
        if doc_id not in self.bodies or doc_id in self.deleted:
            return
        self.counter += 1
        self.revs[doc_id] = f"{self.counter}-x"
        self.deleted.add(doc_id)
        self.index.apply({"_id": doc_id, "_rev": self.revs[doc_id], "_deleted": True}, self.counter)

    @rule(rules=st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES)},
                                               optional={"depth": st.sampled_from(DEPTHS[1:]),
                                                         "report_depth": st.sampled_from(DEPTHS[1:])}),
                         max_size=3),
          unallocated=st.booleans(), unallocated_roles=st.sampled_from([["sup"], ["chw"], []]))  # fmt: skip
    def change_settings(
        self, rules: list[dict[str, Any]], unallocated: bool, unallocated_roles: list[str]
    ) -> None:
        before = self.app_settings()
        self.app = {"rules": rules, "unallocated": unallocated, "unallocated_roles": unallocated_roles}
        # As the service does: the settings doc is a change of its own, then the index hears of it.
        self.write({"_id": "settings"})
        if self.app_settings() is not before:
            self.index.settings_changed(before)

    @rule(user=st.sampled_from(USERS))
    def device_pulls(self, user: str) -> None:
        """A device of `user` pulls from its checkpoint: it then holds exactly the live docs
        its user may read, whatever left the scope since (removals) or came back."""
        app = self.app_settings()
        current = self.users[user]
        device = self.devices[user]
        everything = device["print"] != scope_inputs(current, app)
        rows = self.index.changes_since(current, app, 0 if everything else device["at"])
        gone = self.index.left_scope(current, app, device["ctx"], device["at"], everything=everything)
        for entry in rows:
            (device["held"].discard if entry.deleted else device["held"].add)(entry.id)
        for entry in gone:
            device["held"].discard(entry.id)
        expected = {e.id for e in self.index.readable_entries(current, app) if not e.deleted}
        assert device["held"] == expected, (user, device["held"] ^ expected, [e.id for e in gone])
        device.update(at=self.index.ordinal, ctx=current, print=scope_inputs(current, app))

    @rule(user=st.sampled_from(USERS), before=st.integers(0, 6), after=st.integers(0, 6))
    def device_pulls_placed(self, user: str, before: int, after: int) -> None:
        """The same pull, where couchgate knows the device's position only to lie between
        two ordinals (a token of another replica or of a crashed process, placed by its
        times): changes are sent from the earlier one, and what left is judged over the
        whole span. The device still ends holding exactly its user's readable docs."""
        app = self.app_settings()
        current = self.users[user]
        device = self.devices[user]
        at = device["at"]
        low = max(self.index.history.since, at - before)
        high = min(self.index.ordinal, at + after)
        if low > at:
            return  # the index no longer remembers that far back (the horizon)
        everything = device["print"] != scope_inputs(current, app)
        rows = self.index.changes_since(current, app, 0 if everything else low)
        gone = {
            e.id
            for point in ((low, high), (high, None))
            for e in self.index.left_scope(
                current, app, device["ctx"], point[0], everything=everything, until=point[1]
            )
        }
        for entry in rows:
            (device["held"].discard if entry.deleted else device["held"].add)(entry.id)
        device["held"] -= gone
        expected = {e.id for e in self.index.readable_entries(current, app) if not e.deleted}
        assert device["held"] == expected, (user, device["held"] ^ expected, sorted(gone))
        device.update(at=self.index.ordinal, ctx=current, print=scope_inputs(current, app))

    @rule(user=st.sampled_from(USERS))
    def count_again(self, user: str) -> None:
        """The users-at-risk count: one it keeps (`still_exact`) is what counting now gives."""
        app, current, index = self.app_settings(), self.users[user], self.index
        old = self.counted.get(user)
        keys: list[str] = []
        steps = index.counting(current, app, keys=keys)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                now: dict[str, int] = done.value
                break
        if old is not None and still_exact(old, current, app, index, index.touched_since(old.ordinal)):
            assert old.by_kind == now, (user, old.by_kind, now)
        self.counted[user] = Counted(
            now, sum(now.values()), 0.0, index.ordinal, app, current, index.looked_under(keys)
        )

    @rule(user=st.sampled_from(USERS), facilities=st.lists(st.sampled_from(PLACES), min_size=1, max_size=2, unique=True),
          contact=st.sampled_from([*PEOPLE, None]),
          roles=st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True))  # fmt: skip
    def change_user(self, user: str, facilities: list[str], contact: str | None, roles: list[str]) -> None:
        self.users[user] = UserCtx(user, tuple(roles), tuple(facilities), contact)

    @invariant()
    def index_agrees_and_clients_have_no_gaps(self) -> None:
        if not hasattr(self, "index"):
            return
        app = self.app_settings()
        oracle = Oracle(self.bodies, self.deleted, self.app)
        for name, user in self.users.items():
            expected = oracle.readable(user)
            # A client following the feed: a backfill from 0 when its scope inputs change.
            # Asked before the user's whole feed is read below, so that after a change of the
            # tree it is answered without a current feed (as after a restart or an eviction).
            fingerprint = scope_inputs(user, app)
            if self.prints.get(name) != fingerprint:
                self.prints[name] = fingerprint
                self.cursor[name] = 0
            for entry in self.index.changes_since(user, app, self.cursor[name]):
                self.clients[name][entry.id] = entry.rev
            self.cursor[name] = self.index.ordinal
            missing = {i for i in expected if self.clients[name].get(i) != self.revs[i]}
            assert not missing, (name, missing)
            got = {e.id for e in self.index.readable_entries(user, app)}
            assert got == expected, (name, got ^ expected)


IndexMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_index_agrees_with_naive_recomputation = IndexMachine.TestCase


def test_a_placed_pull_judges_a_doc_again_at_each_moment_of_its_span() -> None:
    """Found by the state machine: in a placed span, r2 (unallocated) was judged at the
    first settings change (not readable under those settings) and then never again, though
    at the next change its role could read it; the device kept it after it left."""
    machine = IndexMachine()
    machine.setup()
    machine.upsert_report(doc_id="r2", private=False, signoff=False, subject=None, submitter=None,
                          where="patient_uuid")  # fmt: skip
    machine.change_settings(rules=[], unallocated=True, unallocated_roles=["sup"])
    machine.change_settings(rules=[], unallocated=True, unallocated_roles=["chw"])
    machine.device_pulls(user="u1")
    assert "r2" in machine.devices["u1"]["held"]
    machine.upsert_report(doc_id="r2", private=False, signoff=False, subject="a1", submitter=None,
                          where="patient_uuid")  # fmt: skip
    machine.device_pulls_placed(after=1, before=2, user="u1")  # asserts what the device holds
    assert "r2" not in machine.devices["u1"]["held"]


def test_a_placed_pull_takes_off_a_user_doc_made_a_contact_and_moved() -> None:
    """Found by the state machine, the same cause: the user's own doc, made a contact in
    their facility and moved out of it, stayed on the device after a placed pull."""
    machine = IndexMachine()
    machine.setup()
    machine.change_user(contact="p1", facilities=["d1"], roles=["chw"], user="u2")
    machine.upsert_typed_contact(contact_type="household", doc_id="tc_house", parent="d1")
    machine.upsert_contact(code="S1", doc_id="org.couchdb.user:u2", grandparent="d1", parent="d1")
    machine.device_pulls(user="u2")
    machine.upsert_contact(code="S1", doc_id="org.couchdb.user:u2", grandparent="d1", parent="d2")
    machine.device_pulls_placed(after=1, before=2, user="u2")  # asserts what the device holds
    assert "org.couchdb.user:u2" not in machine.devices["u2"]["held"]


def test_a_pull_takes_off_a_private_report_a_new_contact_makes_about_the_user() -> None:
    """Found by the state machine: a private report about p1 (a shortcode nobody held) was
    readable through its submitter's lineage; then the user's own contact appeared outside
    the scope holding shortcode p1, so the report became private to them (R7a). The past
    was judged on the tree as it stands now (no contact in the scope had changed), where p1
    already named the user's contact: never readable, so never taken off the device."""
    machine = IndexMachine()
    machine.setup()
    machine.device_pulls(user="u1")
    machine.upsert_report(doc_id="r1", private=True, signoff=True, subject="p1", submitter="p1",
                          where="patient_id")  # fmt: skip
    machine.device_pulls(user="u1")
    assert "r1" in machine.devices["u1"]["held"]
    machine.upsert_contact(code="p1", doc_id="chw", grandparent="d1", parent="d1")
    machine.device_pulls(user="u1")  # asserts what the device holds
    assert "r1" not in machine.devices["u1"]["held"]


def test_a_placed_pull_judges_what_was_born_in_its_span_under_the_scope_at_its_start() -> None:
    """Found by the state machine: the device pulled an unallocated report its role could
    read; the settings then took that away. Placed somewhere after the first settings
    change, the pull judged the span only after each change within it, never under the
    scope at its start, where the report (born inside the span) was readable: the device
    kept it."""
    machine = IndexMachine()
    machine.setup()
    machine.change_settings(rules=[], unallocated=True, unallocated_roles=["chw"])
    machine.upsert_report(doc_id="r1", private=False, signoff=False, subject=None, submitter=None,
                          where="patient_uuid")  # fmt: skip
    machine.device_pulls_placed(after=0, before=0, user="u1")
    assert "r1" in machine.devices["u1"]["held"]
    machine.change_settings(rules=[], unallocated=False, unallocated_roles=["sup"])
    machine.device_pulls_placed(after=1, before=1, user="u1")  # asserts what the device holds
    assert "r1" not in machine.devices["u1"]["held"]


def test_a_place_that_stops_being_a_contact_takes_what_hangs_below_it_off_the_device() -> None:
    """A place in the scope rewritten as no contact: the contacts below it hang from
    nothing and leave the scope, though none of them changed; they are changes again, so
    a pull finds that they left."""
    machine = IndexMachine()
    machine.setup()
    machine.change_user(user="u1", facilities=["d1"], contact="p1", roles=["chw"])
    machine.upsert_contact(doc_id="hc1", parent="d1", grandparent=None, code=None)
    machine.upsert_contact(doc_id="a1", parent="hc1", grandparent="d1", code=None)
    machine.upsert_contact(doc_id="p2", parent="a1", grandparent="hc1", code=None)
    machine.device_pulls(user="u1")
    assert {"hc1", "a1", "p2"} <= machine.devices["u1"]["held"]
    machine.retype_contact(doc_id="hc1", doc_type="note")
    machine.index_agrees_and_clients_have_no_gaps()
    machine.device_pulls(user="u1")  # asserts what the device holds
    assert not {"hc1", "a1", "p2"} & machine.devices["u1"]["held"]


def test_a_contact_that_stops_being_one_gives_its_id_back_to_a_shortcode() -> None:
    """A report about `p2` from a shortcode field names nobody while p2 is both a contact's
    id (outside the scope) and another's shortcode (inside it). p2 rewritten as no contact:
    the shortcode names its holder alone, the report is readable, and a client following
    the feed must get it (a change, though the report did not change)."""
    machine = IndexMachine()
    machine.setup()
    machine.upsert_contact(doc_id="p1", parent="a1", grandparent=None, code="p2")
    machine.upsert_contact(doc_id="p2", parent="d2", grandparent=None, code=None)
    machine.upsert_report(doc_id="r1", private=False, signoff=False, subject="p2", submitter=None,
                          where="patient_id")  # fmt: skip
    machine.index_agrees_and_clients_have_no_gaps()
    machine.device_pulls(user="u1")
    assert "r1" not in machine.devices["u1"]["held"]
    machine.retype_contact(doc_id="p2", doc_type="data_record")
    machine.index_agrees_and_clients_have_no_gaps()  # asserts the client following the feed has r1
    machine.device_pulls(user="u1")
    assert "r1" in machine.devices["u1"]["held"]


Step = Callable[[IndexMachine], None]


def contact(doc_id: str, parent: str, code: str | None = None) -> Step:
    return lambda m: m.upsert_contact(doc_id=doc_id, parent=parent, grandparent=None, code=code)


def report(
    subject: str, where: str = "patient_id", private: bool = False, submitter: str | None = None
) -> Step:
    return lambda m: m.upsert_report(doc_id="r1", subject=subject, where=where, private=private,
                                     signoff=submitter is not None, submitter=submitter)  # fmt: skip


def delete(doc_id: str) -> Step:
    return lambda m: m.delete(doc_id=doc_id)


def retype(doc_id: str, doc_type: str) -> Step:
    return lambda m: m.retype_contact(doc_id=doc_id, doc_type=doc_type)


# What a stored report names changes while the report does not: u1 (facility a1, contact
# chw) could read r1 after the first steps, and cannot after the last one.
NAMING_CHANGES: dict[str, tuple[tuple[Step, ...], Step]] = {
    "its shortcode's holder deleted": ((contact("p1", "a1", "S1"), report("S1")), delete("p1")),
    "its shortcode taken by a contact outside too": (
        (contact("p1", "a1", "S1"), report("S1")), contact("p2", "d2", "S1")),
    "its shortcode taken back by a deleted holder revived outside": (
        (contact("p1", "a1", "S1"), contact("p2", "d2", "S1"), delete("p2"), contact("p2", "d2"), report("S1")),
        contact("p2", "d2", "S1")),
    "its shortcode made a contact's id outside": ((contact("p1", "a1", "p2"), report("p2")), contact("p2", "d2")),
    "its contact's id taken as a shortcode outside": (
        (contact("p1", "a1"), report("p1")), contact("p2", "d2", "p1")),
    "its contact's id taken as a place_id outside": (
        (contact("p1", "a1"), report("p1", "place_id")), contact("h2", "d2", "p1")),
    "the user's contact appears, named by patient_uuid (private)": (
        (report("chw", "patient_uuid", private=True, submitter="p1"),), contact("chw", "d1")),
    "the user's contact appears, named by patient_id (private)": (
        (report("chw", private=True, submitter="p1"),), contact("chw", "d1")),
    "the user's contact takes its shortcode (private)": (
        (contact("chw", "d1"), report("S2", private=True, submitter="p1")), contact("chw", "d1", "S2")),
    "its shortcode's holder no contact any more": ((contact("p1", "a1", "S1"), report("S1")), retype("p1", "note")),
    "its contact no contact any more": (
        (contact("p1", "a1"), report("p1", "patient_uuid")), retype("p1", "contact")),
    "its contact's parent no contact any more": (
        (contact("h1", "a1"), contact("p1", "h1"), report("p1", "patient_uuid")), retype("h1", "data_record")),
    "its submitter no contact any more (private, about the user's contact)": (
        (contact("p1", "a1"), contact("chw", "d1"), report("chw", "patient_uuid", private=True, submitter="p1")),
        retype("p1", "note")),
}  # fmt: skip


@pytest.mark.parametrize("placed", [False, True], ids=["exact", "placed"])
@pytest.mark.parametrize("name", list(NAMING_CHANGES))
def test_a_report_that_stops_naming_the_scope_leaves_the_device(name: str, placed: bool) -> None:
    """Each way a report's readability changes through another doc (a shortcode's holders,
    a contact appearing, deleted or made no contact, the user's own contact appearing):
    a device that held it, pulling from its exact position or from a placed one, drops it."""
    setup, change = NAMING_CHANGES[name]
    machine = IndexMachine()
    machine.setup()
    for step in setup:
        step(machine)
    machine.index_agrees_and_clients_have_no_gaps()
    machine.device_pulls(user="u1")
    assert "r1" in machine.devices["u1"]["held"]
    change(machine)
    machine.index_agrees_and_clients_have_no_gaps()
    if placed:
        machine.device_pulls_placed(user="u1", before=1, after=1)  # asserts what the device holds
    else:
        machine.device_pulls(user="u1")  # asserts what the device holds
    assert "r1" not in machine.devices["u1"]["held"]
