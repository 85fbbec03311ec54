"""The scope index agrees with a naive recomputation of every user's readable set, and an
incremental client following `changes_since` never misses a doc it may read (no gaps),
after random creates, updates, moves, deletes, settings changes and user changes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from proxy.access.config import AppSettings, UserCtx
from proxy.access.decide import ContactNode, is_readable, scope_inputs
from proxy.access.kinds import kind_of
from proxy.access.scope_index import ScopeIndex

PLACES = ["d1", "d2", "hc1", "hc2", "a1", "a2", "a3", "h1", "h2", "h3"]
PEOPLE = ["p1", "p2", "p3", "p4", "chw"]
REPORTS = ["r1", "r2", "r3", "r4", "r5"]
OTHERS = ["t1", "g1", "settings-like", "org.couchdb.user:u1", "org.couchdb.user:u2"]
CONTACTS = PLACES + PEOPLE
SHORTCODES = ["S1", "S2", "S3"]
USERS = ["u1", "u2"]


class NaiveGraph:
    def __init__(self, bodies: dict[str, dict[str, Any]]) -> None:
        self.nodes = {
            i: ContactNode(i, (b.get("parent") or {}).get("_id"), b.get("patient_id") or b.get("place_id"))
            for i, b in bodies.items()
            if kind_of(b) in {"place", "person"}
        }

    def contact(self, contact_id: str) -> ContactNode | None:
        return self.nodes.get(contact_id)

    def children(self, contact_id: str) -> list[str]:
        return [n.id for n in self.nodes.values() if n.parent == contact_id]


class IndexMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.index = ScopeIndex()
        self.bodies: dict[str, dict[str, Any]] = {}  # last live body of every doc ever written
        self.revs: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.counter = 0
        self.app = {"depth": None, "report_depth": None, "unallocated": False}
        self.users = {u: UserCtx(u, ("chw",), ("a1",), "chw") for u in USERS}
        self.clients: dict[str, dict[str, str]] = {u: {} for u in USERS}
        self.cursor = dict.fromkeys(USERS, 0)
        self.prints: dict[str, object] = {}

    def app_settings(self) -> AppSettings:
        """The same object until the settings change, as the service keeps it (the index
        caches per settings object, and that cache must be exercised too)."""
        if getattr(self, "_app_for", None) != self.app:
            self._app_for = dict(self.app)
            self._app_obj = self._build_settings()
        return self._app_obj

    def _build_settings(self) -> AppSettings:
        rule: dict[str, Any] = {"role": "chw"}
        if self.app["depth"] is not None:
            rule["depth"] = self.app["depth"]
        if self.app["report_depth"] is not None:
            rule["report_depth"] = self.app["report_depth"]
        return AppSettings.from_doc({"settings": {
            "roles": {"chw": {"offline": True}},
            "permissions": {"can_view_unallocated_data_records": ["chw"]},
            "replication_depth": [rule] if len(rule) > 1 else [],
            "district_admins_access_unallocated_messages": self.app["unallocated"],
        }})  # fmt: skip

    def write(self, doc: dict[str, Any]) -> None:
        self.counter += 1
        doc["_rev"] = f"{self.counter}-x"
        self.bodies[doc["_id"]] = doc
        self.revs[doc["_id"]] = doc["_rev"]
        self.deleted.discard(doc["_id"])
        self.index.apply(dict(doc), self.counter)

    @rule(doc_id=st.sampled_from(CONTACTS), parent=st.sampled_from([*PLACES, None]),
          code=st.sampled_from([*SHORTCODES, None]))  # fmt: skip
    def upsert_contact(self, doc_id: str, parent: str | None, code: str | None) -> None:
        doc: dict[str, Any] = {"_id": doc_id, "type": "person" if doc_id in PEOPLE else "clinic"}
        if parent and parent != doc_id:
            doc["parent"] = {"_id": parent}
        if code:
            doc["patient_id" if doc_id in PEOPLE else "place_id"] = code
        self.write(doc)

    @rule(doc_id=st.sampled_from(REPORTS), subject=st.sampled_from([*CONTACTS, *SHORTCODES, None]),
          submitter=st.sampled_from([*PEOPLE, None]), signoff=st.booleans(), private=st.booleans())  # fmt: skip
    def upsert_report(
        self, doc_id: str, subject: str | None, submitter: str | None, signoff: bool, private: bool
    ) -> None:
        fields: dict[str, Any] = {"needs_signoff": signoff, "private": private}
        if subject:
            fields["patient_uuid" if subject in CONTACTS else "patient_id"] = subject
        doc: dict[str, Any] = {"_id": doc_id, "type": "data_record", "fields": fields}
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

    @rule(doc_id=st.sampled_from(CONTACTS + REPORTS + OTHERS))
    def delete(self, doc_id: str) -> None:
        if doc_id not in self.bodies or doc_id in self.deleted:
            return
        self.counter += 1
        self.revs[doc_id] = f"{self.counter}-x"
        self.deleted.add(doc_id)
        self.index.apply({"_id": doc_id, "_rev": self.revs[doc_id], "_deleted": True}, self.counter)

    @rule(depth=st.sampled_from([None, 0, 1, 2, 3]), report_depth=st.sampled_from([None, 0, 1, 2]),
          unallocated=st.booleans())  # fmt: skip
    def change_settings(self, depth: int | None, report_depth: int | None, unallocated: bool) -> None:
        self.app = {"depth": depth, "report_depth": report_depth, "unallocated": unallocated}

    @rule(user=st.sampled_from(USERS), facilities=st.lists(st.sampled_from(PLACES), min_size=1, max_size=2, unique=True),
          contact=st.sampled_from([*PEOPLE, None]))  # fmt: skip
    def change_user(self, user: str, facilities: list[str], contact: str | None) -> None:
        self.users[user] = UserCtx(user, ("chw",), tuple(facilities), contact)

    def naive(self, user: UserCtx, app: AppSettings) -> set[str]:
        graph = NaiveGraph(self.bodies)
        return {i for i, body in self.bodies.items() if is_readable(body, user, app, graph)}

    @invariant()
    def index_agrees_and_clients_have_no_gaps(self) -> None:
        if not hasattr(self, "index"):
            return
        app = self.app_settings()
        for name, user in self.users.items():
            expected = self.naive(user, app)
            got = {e.id for e in self.index.readable_entries(user, app)}
            assert got == expected, (name, got ^ expected)
            # A client following the feed: a backfill from 0 when its scope inputs change.
            fingerprint = scope_inputs(user, app, self.index)
            if self.prints.get(name) != fingerprint:
                self.prints[name] = fingerprint
                self.cursor[name] = 0
            for entry in self.index.changes_since(user, app, self.cursor[name]):
                self.clients[name][entry.id] = entry.rev
            self.cursor[name] = self.index.ordinal
            missing = {i for i in expected if self.clients[name].get(i) != self.revs[i]}
            assert not missing, (name, missing)


IndexMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_index_agrees_with_naive_recomputation = IndexMachine.TestCase
