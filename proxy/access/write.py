"""What an offline user may write (pure, no I/O).

A write is judged on three things: the new version, in the tree as it will stand after
the write (`after`, with the request's other permitted contacts laid over it); the stored
winner, in the tree as it stands (`before`); and the user's permissions. The rules, in
order; the first that refuses decides, and its id travels with the decision (`rule`; an
allowed write of an offline user says `allowed`, an admin's `W1`):

    W1  admins may write anything
    W2  never `_design/*`, `_local/*` (written through their own route), global docs, nor
        any doc under another user's `org.couchdb.user:*` id (whatever its type: it would
        fill in that user's facility and contact, or block their user-settings)
    W3  the new version must be readable after the write (a delete: the stored version);
        else `forbidden`, with one reason whether or not the doc exists
    W4  the stored winner must be readable (a deleted one: its last version must have
        been); else, for a write whose new version the user could read, CouchDB's own
        `conflict` (what a missing doc with a made-up `_rev` gets), for a delete
        `forbidden` (what deleting a missing doc gets): nothing tells a doc outside the
        scope from a missing one. Also (`proxy.offline.writes`, which reads the leaves): a
        write building on a conflict leaf other than the winner that the user may not see
    W5  never over a stored global or design doc
    W6  never the user's own facility
    W7  never a doc with a `purged` field, stored or new
    W8  never a change of the facility, contact or roles in the user's own user-settings
    W9  never turn a contact into another kind of doc or back; a contact may take a new
        shortcode only when no other contact holds it or has it as its `_id`, and no report
        the user cannot read names it (else the shortcode would hide another's reports, or
        claim them); it may keep or drop the one it has
    W10 never create a contact whose `_id` is reserved or another contact's shortcode; and a
        contact created or moved never brings into the user's scope a stored doc they
        cannot read now (a report, target or child that names its id, a contact below it
        now within the depth, a report below the `report_depth`): a write places the
        written docs, never claims others
    W11 a report created (or whose `contact` changes) names a submitter in the scope (or
        the user's own contact) and a lineage of contacts in the scope or above the user's
        facilities; one created (or whose subject changes) names a subject in the scope (or
        the user's own contact): no report is planted into another's area, nor carries a
        forged lineage
    W14 an attachment stub names an attachment the stored doc has (same name and digest,
        which the stub must carry): a stub is no way to copy another doc's attachment, nor
        another revision's
    W12 `can_edit`
    W13 the permission for the kind and operation (create, update, delete)
    W15 (`made_up_rev`, for edits, not replication) a write that names a `_rev` of a doc
        with no live version is CouchDB's `conflict`, whatever the backend would do:
        CouchDB 3.4 answers so for a deleted doc, but may write a missing one under a child
        of the made-up revision, which would tell a missing doc from one outside the scope
        (W4 answers `conflict` for that)

Every field is read defensively: wrong JSON types count as absent, so no doc can make a
decision raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.access.config import AppSettings, UserCtx, has_permission
from proxy.access.graph import ContactGraph, Filed, OverlayGraph, Scope, WalkScope, ancestors, resolve
from proxy.access.kinds import (
    CONTACT_KINDS,
    DESIGN,
    GLOBAL,
    PERSON,
    PLACE,
    REPORT,
    USER_PREFIX,
    contact_is_person,
    kind_of,
    lineage_ids,
    parent_id,
    report_subject,
    reserved,
    shortcode,
)
from proxy.access.read import body_readable, contact_node, entry_readable

CONFLICT_REASON = "Document update conflict."


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    rule: str = ""
    error: str = "forbidden"  # what the client is told: `forbidden`, `conflict` (W4), `missing_stub` (W14)

    @property
    def status(self) -> int:
        return {"conflict": 409, "missing_stub": 412}.get(self.error, 403)

    @property
    def why(self) -> str:
        """The reason for operators (the audit log); the client may have been told less."""
        return OUTSIDE_REASON if self.rule == "W4" else self.reason


ALLOWED = Decision(True, rule="allowed")  # every rule passed
ADMIN = Decision(True, rule="W1")
# One reason for a doc the user cannot see, whether it exists or not (no existence oracle).
OUTSIDE_REASON = "the document is outside your replication scope"
OUTSIDE = Decision(False, OUTSIDE_REASON, "W3")
GLOBAL_REASON = "global and design documents cannot be written by offline users"
PERMISSIONS = {
    REPORT: ("can_create_records", "can_update_reports", "can_delete_reports"),
    PERSON: ("can_create_people", "can_update_people", "can_delete_contacts"),
    PLACE: ("can_create_places", "can_update_places", "can_delete_contacts"),
}
# Fields of the user's own user-settings doc that fill in the user's rights where the
# `_users` doc lacks them (`proxy.auth.users.merge_user_docs`).
OWN_RIGHTS = ("facility_id", "contact_id", "roles")


def made_up_rev(doc: Mapping[str, Any], stored: Mapping[str, Any] | None, decision: Decision) -> Decision:
    """W15, over a decision already made for an edit (`new_edits`): a refusal stands; an
    allowed write naming a `_rev` where no live version is stored is a conflict."""
    if decision.allowed and stored is None and doc.get("_rev") is not None and not doc.get("_deleted"):
        return Decision(False, CONFLICT_REASON, "W15", error="conflict")
    return decision


def refuse(rule: str, reason: str) -> Decision:
    return Decision(False, reason, rule)


@dataclass
class TreeView:
    """The tree before a request's writes (`base`, judged by `before`) and after them
    (`graph`, judged by `after`); `written`: the ids the request writes."""

    base: ContactGraph
    before: Scope
    graph: ContactGraph
    after: Scope
    written: frozenset[str]

    @classmethod
    def of(
        cls,
        user: UserCtx,
        settings: AppSettings,
        base: ContactGraph,
        overlay: OverlayGraph,
        written: Iterable[str],
    ) -> TreeView:
        before, after = WalkScope(user, settings, base), WalkScope(user, settings, overlay)
        return cls(base, before, overlay, after, frozenset(written))


def single(
    user: UserCtx,
    settings: AppSettings,
    base: ContactGraph,
    new_doc: Mapping[str, Any],
    stored: Mapping[str, Any] | None,
) -> TreeView:
    """The tree view for one doc written alone."""
    nodes = {}
    doc_id = new_doc.get("_id")
    if isinstance(doc_id, str):
        node = overlay_node(new_doc, stored)
        if node is not None:
            nodes[doc_id] = node
    return TreeView.of(user, settings, base, OverlayGraph(base, nodes), [str(doc_id)])


def overlay_node(doc: Mapping[str, Any], stored: Mapping[str, Any] | None) -> Any:
    """The node a written doc puts in the tree: a contact's new version, or a deleted
    contact at its stored place (a deleted contact keeps its place); else None."""
    if doc.get("_deleted") is True:
        if stored is not None and kind_of(stored) in CONTACT_KINDS and isinstance(doc.get("_id"), str):
            return contact_node({**stored, "_id": doc["_id"], "_deleted": True})
        return None
    if kind_of(doc) in CONTACT_KINDS and isinstance(doc.get("_id"), str):
        return contact_node(doc)
    return None


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
    view: TreeView | None = None,
    *,
    hidden: bool = False,
) -> Decision:
    """May the user write `new_doc` over `stored` (the live winner, or None)? `hidden`: no
    live winner, but a deleted one whose last version the user could not read. `view`:
    the tree with the request's other permitted contacts (`proxy.access.batch`)."""
    if user.is_admin:
        return ADMIN
    deleting = new_doc.get("_deleted") is True
    doc_id = new_doc.get("_id")
    doc_id = doc_id if isinstance(doc_id, str) else ""
    if doc_id.startswith("_local/"):
        return refuse("W2", "_local documents are written with PUT /{db}/_local/{id}")
    if doc_id.startswith("_design/") or kind_of(new_doc) in {GLOBAL, DESIGN}:
        return refuse("W2", GLOBAL_REASON)
    if doc_id.startswith(USER_PREFIX) and doc_id != user.user_doc_id:
        return Decision(False, OUTSIDE_REASON, "W2")  # as W3 answers it: existing or not
    if view is None:
        view = single(user, settings, graph, new_doc, stored)
    # Scope first: every later reason would tell an existing foreign doc from a missing one.
    if (stored is None or not deleting) and not body_readable(
        new_doc, user, settings, view.graph, view.after, bare_tombstones=False
    ):
        return OUTSIDE
    if hidden or (stored is not None and not body_readable(stored, user, settings, view.base, view.before)):
        if deleting:
            return Decision(False, OUTSIDE_REASON, "W4")
        return Decision(False, CONFLICT_REASON, "W4", error="conflict")
    if stored is not None and kind_of(stored) in {GLOBAL, DESIGN}:
        return refuse("W5", GLOBAL_REASON)
    if doc_id in user.facility_ids:
        return refuse("W6", "you cannot edit your own facility")
    if "purged" in new_doc or (stored is not None and "purged" in stored):
        return refuse("W7", "purged documents cannot be written")
    if _changes_own_rights(user, new_doc, stored):
        return refuse("W8", "offline users cannot change their own facility, contact or roles")
    if not deleting:
        refusal = (
            _contact_rule(user, settings, new_doc, stored, view)
            or _report_rule(user, new_doc, stored, view)
            or _stub_rule(new_doc, stored)
        )

        if refusal is not None:
            return refusal
    if not has_permission(user, settings, "can_edit"):
        return refuse("W12", "missing permission can_edit")
    operation = 2 if deleting else (1 if stored is not None else 0)
    body = stored if deleting and stored is not None else new_doc
    needed = PERMISSIONS.get(_kind_for_permission(body, settings))
    if needed is not None and not has_permission(user, settings, needed[operation]):
        return refuse("W13", f"missing permission {needed[operation]}")
    return ALLOWED


def _contact_rule(
    user: UserCtx,
    settings: AppSettings,
    new_doc: Mapping[str, Any],
    stored: Mapping[str, Any] | None,
    view: TreeView,
) -> Decision | None:
    contact = kind_of(new_doc) in CONTACT_KINDS
    was_contact = stored is not None and kind_of(stored) in CONTACT_KINDS
    if stored is not None and contact != was_contact:
        return refuse("W9", "offline users cannot turn a contact into another kind of document or back")
    if not contact:
        return None
    code = shortcode(new_doc)
    was = shortcode(stored) if stored is not None else None
    doc_id = str(new_doc.get("_id"))
    graph = view.graph
    if code is not None and code != was:
        taken = any(h != doc_id for h in graph.holders(code)) or (
            code != doc_id and graph.contact(code) is not None
        )
        if taken or _claims(user, settings, view.base.filed(code), view):
            return refuse("W9", "this shortcode (patient_id, place_id) is taken")
    if stored is None and (reserved(doc_id) or any(h != doc_id for h in view.base.holders(doc_id))):
        return refuse("W10", "a new contact's _id may not be reserved or another contact's shortcode")
    moved = stored is None or parent_id(new_doc) != parent_id(stored)
    if moved and _claims(user, settings, view.base.affected(doc_id), view):
        return refuse("W10", "this write would bring documents you cannot read into your area")
    return None


def _claims(user: UserCtx, settings: AppSettings, docs: Iterable[Filed], view: TreeView) -> bool:
    """Would the request bring one of these stored docs (the request's own aside) into the
    user's scope, or into their area (below their facilities at any depth: what the users
    above them, without the user's depth limits, would then read)?"""
    area = replace(settings, depth_rules=())  # no depth, no report_depth: the whole area
    scopes = [
        (settings, view.before, view.after),
        (area, WalkScope(user, area, view.base), WalkScope(user, area, view.graph)),
    ]
    for e in docs:
        if e.id in view.written:
            continue
        for rules, before, after in scopes:
            if entry_readable(e.id, e.kind, e.keys, e.facts, user, rules, before, view.base):
                continue
            if entry_readable(e.id, e.kind, e.keys, e.facts, user, rules, after, view.graph):
                return True
    return False


def _report_rule(
    user: UserCtx, new_doc: Mapping[str, Any], stored: Mapping[str, Any] | None, view: TreeView
) -> Decision | None:
    if kind_of(new_doc) != REPORT:
        return None
    old = stored if stored is not None and kind_of(stored) == REPORT else None
    if old is None or old.get("contact") != new_doc.get("contact"):
        line = lineage_ids(new_doc.get("contact"))
        submitter = line[0] if line else None
        if submitter is None or (submitter != user.contact_id and view.after.depth(submitter) is None):
            return refuse("W11", "a report's submitter (contact) must be a contact in your area")
        above = {a for f in user.facility_ids for a in ancestors(view.graph, f)}
        if any(view.after.depth(c) is None and c not in above for c in line[1:]):
            return refuse("W11", "a report's submitter lineage must be the lineage of a contact in your area")
    subject, code_field = report_subject(new_doc)
    if subject is not None and (old is None or report_subject(old) != (subject, code_field)):
        named = resolve(subject, code_field, view.graph)
        if named is None or (named != user.contact_id and view.after.depth(named) is None):
            return refuse("W11", "a report's subject must be a contact in your area")
    return None


def _stub_rule(new_doc: Mapping[str, Any], stored: Mapping[str, Any] | None) -> Decision | None:
    attachments = new_doc.get("_attachments")
    if not isinstance(attachments, Mapping):
        return None
    kept = stored.get("_attachments") if stored is not None else None
    kept = kept if isinstance(kept, Mapping) else {}
    for name, att in attachments.items():
        if not isinstance(att, Mapping) or att.get("stub") is not True:
            continue
        have = kept.get(name)
        digest = att.get("digest")
        # The digest is required: CouchDB fills a stub from the revision the write builds
        # on, which need not be the winner judged here; the same digest is the same bytes.
        if not isinstance(have, Mapping) or digest is None or have.get("digest") != digest:
            reason = f"Invalid attachment stub in {str(new_doc.get('_id'))[:100]} for {str(name)[:100]}"
            return Decision(False, reason, "W14", error="missing_stub")
    return None
