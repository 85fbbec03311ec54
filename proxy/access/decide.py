"""Who may read and write what (DESIGN.md 2 and 3): pure functions over a contact graph.

Reading, in order: global docs are readable; `_design/*` others are not; the user's own
user-settings doc is; otherwise one of the doc's replication keys must be a subject of
the user, except that a private report about the user's own facility or contact whose
submitter is not a subject never is, and with a `report_depth` a report keyed only deeper
than it is readable only if the user's own contact submitted it (`_unassigned` is not
depth limited). The user's own `org.couchdb.user:<name>` is a subject for what is filed
under it (user-settings, tasks), never for a contact: a contact is in scope only through
its place in the tree, whatever its id.

Writing, in order: admins may; never `_design/*` or global docs; a stored winner the user
cannot read, or a new version (for a delete without a stored winner: the tombstone) the
user could not read, is refused with one reason, so the answer never tells a foreign doc
from a missing one; never the user's own facility doc, docs with a `purged` field, or a
change of the facility, contact or roles in the user's own user-settings doc; then
`can_edit`; then the permission for the kind and operation. A batch is judged with its own
permitted contacts applied. Every field is read defensively: wrong JSON types count as
absent, so no doc can make a decision raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.access.config import AppSettings, UserCtx, has_permission, replication_depths
from proxy.access.kinds import (
    CONTACT_KINDS,
    DESIGN,
    GLOBAL,
    PERSON,
    PLACE,
    REPORT,
    UNASSIGNED,
    USER_SETTINGS,
    ReportFacts,
    contact_is_person,
    kind_of,
    parent_id,
    replication_keys,
    report_facts,
    shortcode,
)

# The depth recorded for the user's own doc id when the tree walk did not reach it: it
# keys the user's user-settings doc and tasks, but places no contact in scope.
OWN = -1


@dataclass(frozen=True, slots=True)
class ContactNode:
    id: str
    parent: str | None
    shortcode: str | None


class ContactGraph(Protocol):
    def contact(self, contact_id: str) -> ContactNode | None: ...
    def children(self, contact_id: str) -> Iterable[str]: ...


def subjects(user: UserCtx, settings: AppSettings, graph: ContactGraph) -> dict[str, int]:
    """Every subject key of the user (contact ids and shortcodes) with its distance below
    the nearest facility; plus the user's own doc id (at `OWN` unless the walk reached it)
    and, when allowed, `_unassigned`."""
    depth_limit, _ = replication_depths(user, settings)
    found: dict[str, int] = {}
    frontier = [(facility, 0) for facility in user.facility_ids]
    while frontier:
        next_frontier: list[tuple[str, int]] = []
        for contact_id, depth in frontier:
            if found.get(contact_id, depth + 1) <= depth:
                continue
            found[contact_id] = depth
            node = graph.contact(contact_id)
            if node is not None and node.shortcode:
                found[node.shortcode] = min(found.get(node.shortcode, depth), depth)
            if depth_limit is None or depth < depth_limit:
                next_frontier += [(child, depth + 1) for child in graph.children(contact_id)]
        frontier = next_frontier
    found.setdefault(user.user_doc_id, OWN)
    if settings.unallocated_access and has_permission(user, settings, "can_view_unallocated_data_records"):
        found[UNASSIGNED] = 0
    return found


def scope_inputs(user: UserCtx, settings: AppSettings, graph: ContactGraph) -> tuple[object, ...]:
    """Everything besides the shape of the tree below the facilities that decides what the
    user may read. When any of it changes, a client's feed must start over (backfill)."""
    own = [*user.facility_ids, *([user.contact_id] if user.contact_id else [])]
    codes = [(node.shortcode if (node := graph.contact(c)) is not None else None) for c in own]
    return (
        sorted(user.facility_ids),
        sorted(user.roles),
        user.contact_id,
        replication_depths(user, settings),
        settings.scope_fingerprint(user),
        codes,
    )


def _own_subject(subject: str, user: UserCtx, graph: ContactGraph) -> bool:
    own = [*user.facility_ids, *([user.contact_id] if user.contact_id else [])]
    if subject in own:
        return True
    return any((node := graph.contact(c)) is not None and node.shortcode == subject for c in own)


def entry_readable(
    doc_id: str,
    kind: str,
    keys: Sequence[str],
    facts: ReportFacts | None,
    user: UserCtx,
    settings: AppSettings,
    subject_depths: Mapping[str, int],
    graph: ContactGraph,
) -> bool:
    if kind == GLOBAL:
        return True
    if kind == DESIGN:
        return False
    if kind == USER_SETTINGS and doc_id == user.user_doc_id:
        return True
    contact = kind in CONTACT_KINDS
    in_scope = [k for k in keys if k in subject_depths and not (contact and subject_depths[k] == OWN)]
    if not in_scope:
        return False
    if kind == REPORT and facts is not None:
        if (
            facts.private
            and _own_subject(facts.subject, user, graph)
            and facts.submitter not in subject_depths
        ):
            return False
        _, report_depth = replication_depths(user, settings)
        if report_depth is not None and UNASSIGNED not in in_scope:
            too_deep = all(subject_depths[k] > report_depth for k in in_scope)
            if too_deep and (facts.submitter is None or facts.submitter != user.contact_id):
                return False
    return True


def is_readable(
    doc: Mapping[str, Any],
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    subject_depths: Mapping[str, int] | None = None,
) -> bool:
    kind = kind_of(doc)
    depths = subjects(user, settings, graph) if subject_depths is None else subject_depths
    facts = report_facts(doc) if kind == REPORT else None
    return entry_readable(
        str(doc.get("_id")), kind, replication_keys(doc, kind), facts, user, settings, depths, graph
    )


def revision_readable(
    doc: Mapping[str, Any],
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    subject_depths: Mapping[str, int],
) -> bool:
    """May the user see this revision (a past or conflicting one) of a doc whose current
    winner it may read? Judged by the revision's own content: a contact at the place in
    the tree that revision gives it, so a doc moved in does not reveal where it was, nor a
    doc moved out where it is. A bare tombstone reveals nothing beyond its rev."""
    if doc.get("_deleted") is True:
        return True
    if kind_of(doc) in CONTACT_KINDS and isinstance(doc.get("_id"), str):
        scope = BatchScope.of(user, settings, graph, [doc])
        return is_readable(doc, user, settings, scope.graph, scope.depths)
    return is_readable(doc, user, settings, graph, subject_depths)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)
# One reason for a doc the user cannot see, whether it exists or not (no existence oracle).
OUTSIDE = Decision(False, "the document is outside your replication scope")
PERMISSIONS = {
    REPORT: ("can_create_records", "can_update_reports", "can_delete_reports"),
    PERSON: ("can_create_people", "can_update_people", "can_delete_contacts"),
    PLACE: ("can_create_places", "can_update_places", "can_delete_contacts"),
}
# Fields of the user's own user-settings doc that fill in the user's rights where the
# `_users` doc lacks them (`proxy.auth.users.merge_user_docs`).
OWN_RIGHTS = ("facility_id", "contact_id", "roles")


def _kind_for_permission(doc: Mapping[str, Any], settings: AppSettings) -> str:
    kind = kind_of(doc)
    if kind in CONTACT_KINDS:
        return PERSON if contact_is_person(doc, settings.person_types) else PLACE
    return kind


def _changes_own_rights(user: UserCtx, new_doc: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    if new_doc.get("_id") != user.user_doc_id:
        return False
    before = stored if stored is not None else {}
    return any(new_doc.get(name) != before.get(name) for name in OWN_RIGHTS)


def authorize_write(
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    new_doc: Mapping[str, Any],
    stored: Mapping[str, Any] | None,
    batch: BatchScope | None = None,
) -> Decision:
    """May the user write `new_doc` over `stored` (the current winner, or None)? The new
    version is judged in the tree with the write applied (`batch`: with the request's other
    permitted contacts too); the stored version in the tree as it is."""
    if user.is_admin:
        return ALLOWED
    deleting = new_doc.get("_deleted") is True
    doc_id = new_doc.get("_id")
    doc_id = doc_id if isinstance(doc_id, str) else ""
    if doc_id.startswith("_design/") or kind_of(new_doc) in {GLOBAL, DESIGN}:
        return Decision(False, "global and design documents cannot be written by offline users")
    if batch is None:
        batch = BatchScope.of(user, settings, graph, [] if deleting else [new_doc])
    # Scope first: every later reason would tell an existing foreign doc from a missing one.
    if stored is not None and not is_readable(stored, user, settings, graph, batch.current_depths()):
        return OUTSIDE
    if (stored is None or not deleting) and not is_readable(
        new_doc, user, settings, batch.graph, batch.depths
    ):
        return OUTSIDE
    body = stored if deleting and stored is not None else new_doc
    if stored is not None and kind_of(stored) in {GLOBAL, DESIGN}:
        return Decision(False, "global and design documents cannot be written by offline users")
    if doc_id in user.facility_ids:
        return Decision(False, "you cannot edit your own facility")
    if "purged" in new_doc or (stored is not None and "purged" in stored):
        return Decision(False, "purged documents cannot be written")
    if _changes_own_rights(user, new_doc, stored):
        return Decision(False, "offline users cannot change their own facility, contact or roles")
    if not has_permission(user, settings, "can_edit"):
        return Decision(False, "missing permission can_edit")
    operation = 2 if deleting else (1 if stored is not None else 0)
    needed = PERMISSIONS.get(_kind_for_permission(body, settings))
    if needed is not None and not has_permission(user, settings, needed[operation]):
        return Decision(False, f"missing permission {needed[operation]}")
    return ALLOWED


class OverlayGraph:
    """A graph with some contacts of a request applied on top (None: deleted)."""

    def __init__(self, base: ContactGraph, contacts: Mapping[str, ContactNode | None]) -> None:
        self.base = base
        self.nodes = dict(contacts)
        self.extra: dict[str, set[str]] = {}
        for node in self.nodes.values():
            if node is not None and node.parent is not None:
                self.extra.setdefault(node.parent, set()).add(node.id)

    def contact(self, contact_id: str) -> ContactNode | None:
        if contact_id in self.nodes:
            return self.nodes[contact_id]
        return self.base.contact(contact_id)

    def children(self, contact_id: str) -> Iterable[str]:
        kept = [c for c in self.base.children(contact_id) if c not in self.nodes]
        return [*kept, *self.extra.get(contact_id, ())]


def contact_node(doc: Mapping[str, Any]) -> ContactNode:
    return ContactNode(str(doc["_id"]), parent_id(doc), shortcode(doc))


class BatchScope:
    """The user's subjects with some writes applied, and (computed once, on demand) without."""

    def __init__(
        self,
        user: UserCtx,
        settings: AppSettings,
        base: ContactGraph,
        graph: ContactGraph,
        current: Mapping[str, int] | None = None,
    ) -> None:
        self.user, self.settings, self.base, self.graph = user, settings, base, graph
        self.depths = subjects(user, settings, graph)
        self._current = self.depths if graph is base else current

    @classmethod
    def of(
        cls,
        user: UserCtx,
        settings: AppSettings,
        base: ContactGraph,
        docs: Sequence[Mapping[str, Any]],
        current: Mapping[str, int] | None = None,
    ) -> BatchScope:
        overlay: dict[str, ContactNode | None] = {}
        for doc in docs:
            doc_id = doc.get("_id")
            if not isinstance(doc_id, str):
                continue
            if doc.get("_deleted") is True:
                overlay[doc_id] = None
            elif kind_of(doc) in CONTACT_KINDS:
                overlay[doc_id] = contact_node(doc)
        return cls(user, settings, base, OverlayGraph(base, overlay) if overlay else base, current)

    def current_depths(self) -> Mapping[str, int]:
        if self._current is None:
            self._current = subjects(self.user, self.settings, self.base)
        return self._current


def authorize_batch(
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    docs: Sequence[Mapping[str, Any]],
    stored: Mapping[str, Mapping[str, Any] | None],
) -> list[Decision]:
    """Each doc judged with the batch's permitted contacts applied, in request order. A
    contact the user may not write never lends its place in the tree to the others."""
    contact_at = [
        i for i, d in enumerate(docs)
        if isinstance(d.get("_id"), str) and (kind_of(d) in CONTACT_KINDS or d.get("_deleted") is True)
    ]  # fmt: skip
    candidates = set(contact_at)
    current: Mapping[str, int] | None = None
    while True:
        scope = BatchScope.of(user, settings, graph, [docs[i] for i in sorted(candidates)], current)
        decisions = [
            authorize_write(user, settings, graph, doc, stored.get(str(doc.get("_id"))), scope)
            for doc in docs
        ]
        current = scope.current_depths()
        still = {i for i in candidates if decisions[i].allowed}
        if still == candidates:
            return decisions
        candidates = still
