"""What an offline user may read (pure, no I/O).

The rules, in the order they are applied to a doc (`read_rule`); the rule that decides
names itself in the `Readable` it returns (docs/design.md has the table):

    R1  global docs are readable by everyone
    R2  other `_design/*` docs by no offline user
    R3  a user-settings doc only by its own user (its `_id` is the user's doc id)
    R4  a task only by the user its `user` names
    R5  a contact when the tree puts it in scope (`proxy.access.graph`), deleted or not
    R6  a target when its `owner` is a contact in scope
    R7  a report when its subject names a contact in scope (`graph.resolve`: shortcodes
        only from shortcode fields, held by exactly one contact, a live one), or, with
        `fields.needs_signoff`, a contact of its submitter's lineage is in scope, or it
        has no subject and the user may see unallocated reports; except
    R7a a private report about the user's own facility or contact whose submitter is
        outside the scope, never
    R7b with a `report_depth`, a report whose contacts in scope all lie deeper than it,
        only when the user's own contact submitted it (unallocated ones are not limited)
    R8  anything else, never

A body about to be served (`body_rule`) is first checked for R0: a bare tombstone (no
field besides the revision bookkeeping) reveals nothing and may be served; as a write it
puts nothing in anyone's scope.

A value a user writes can therefore only ever name what the tree already gives them: a
shortcode never stands for an id, a user's doc id or `_unassigned`, and a deleted
contact's shortcode names nothing.

Bodies served to a user are judged on themselves (`body_readable`): a contact at the
place its own body gives it, so neither a stale index nor a past revision can show a doc
where it is no longer, or was never, in scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.access.config import AppSettings, UserCtx, replication_depths
from proxy.access.graph import (
    ContactGraph,
    ContactNode,
    OverlayGraph,
    Scope,
    WalkScope,
    resolve,
)
from proxy.access.kinds import (
    CONTACT_KINDS,
    DESIGN,
    GLOBAL,
    REPORT,
    TARGET,
    TASK,
    USER_SETTINGS,
    ReportFacts,
    kind_of,
    parent_id,
    replication_keys,
    report_facts,
    shortcode,
)


@dataclass(frozen=True, slots=True)
class Readable:
    """A read decision and the id of the rule that made it (R0..R8, R7a, R7b)."""

    allowed: bool
    rule: str

    def __bool__(self) -> bool:
        return self.allowed


# One constant per outcome: deciding allocates nothing (the scope index asks per doc).
R0_BARE, R0_WRITE = Readable(True, "R0"), Readable(False, "R0")
R1 = Readable(True, "R1")
R2 = Readable(False, "R2")
R3_OWN, R3_OTHER = Readable(True, "R3"), Readable(False, "R3")
R4_OWN, R4_OTHER = Readable(True, "R4"), Readable(False, "R4")
R5_IN, R5_OUT = Readable(True, "R5"), Readable(False, "R5")
R6_IN, R6_OUT = Readable(True, "R6"), Readable(False, "R6")
R7_IN, R7_OUT = Readable(True, "R7"), Readable(False, "R7")
R7A = Readable(False, "R7a")
R7B_OWN, R7B_DEEP = Readable(True, "R7b"), Readable(False, "R7b")
R8 = Readable(False, "R8")


def read_rule(
    doc_id: str,
    kind: str,
    keys: Sequence[str],
    facts: ReportFacts | None,
    user: UserCtx,
    settings: AppSettings,
    scope: Scope,
    graph: ContactGraph,
) -> Readable:
    """The read rule that decides a doc filed under `keys` (`proxy.access.kinds`)."""
    if kind == GLOBAL:
        return R1
    if kind == DESIGN:
        return R2
    if kind == USER_SETTINGS:
        return R3_OWN if doc_id == user.user_doc_id else R3_OTHER
    if kind == TASK:
        return R4_OWN if keys and keys[0] == user.user_doc_id else R4_OTHER
    if kind in CONTACT_KINDS:
        return R5_IN if scope.depth(doc_id) is not None else R5_OUT
    if kind == TARGET:
        return R6_IN if keys and scope.depth(keys[0]) is not None else R6_OUT
    if kind == REPORT and facts is not None:
        return _report_rule(facts, user, settings, scope, graph)
    return R8


def entry_readable(
    doc_id: str,
    kind: str,
    keys: Sequence[str],
    facts: ReportFacts | None,
    user: UserCtx,
    settings: AppSettings,
    scope: Scope,
    graph: ContactGraph,
) -> bool:
    return read_rule(doc_id, kind, keys, facts, user, settings, scope, graph).allowed


def _report_rule(
    facts: ReportFacts, user: UserCtx, settings: AppSettings, scope: Scope, graph: ContactGraph
) -> Readable:
    subject = resolve(facts.subject, facts.code_field, graph) if facts.subject is not None else None
    depths = [d for c in (subject, *facts.signoff) if c is not None and (d := scope.depth(c)) is not None]
    unassigned = facts.subject is None and scope.unassigned
    if not depths and not unassigned:
        return R7_OUT
    own = {*user.facility_ids, *((user.contact_id,) if user.contact_id else ())}
    if facts.private and subject in own and (facts.submitter is None or scope.depth(facts.submitter) is None):
        return R7A
    _, report_depth = replication_depths(user, settings)
    if report_depth is not None and not unassigned and all(d > report_depth for d in depths):
        return R7B_OWN if facts.submitter is not None and facts.submitter == user.contact_id else R7B_DEEP
    return R7_IN


def contact_node(doc: Mapping[str, Any]) -> ContactNode:
    """A contact's node as its own body places it (`live` unless the body is a tombstone)."""
    return ContactNode(str(doc["_id"]), parent_id(doc), shortcode(doc), doc.get("_deleted") is not True)


def body_rule(
    doc: Mapping[str, Any],
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    scope: Scope,
    *,
    bare_tombstones: bool = True,
) -> Readable:
    """May the user see this body (any revision, about to be served), and by which rule? A
    contact is judged at the place its own body gives it; other docs in the tree as
    `scope` sees it. A bare tombstone (no field besides `_id`, `_rev`, `_deleted`,
    `_revisions`) reveals nothing, so it may be served (`bare_tombstones`); as a write, it
    has nothing that puts it in anyone's scope (R0)."""
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str):
        return R8
    if doc.get("_deleted") is True and all(k in BARE_TOMBSTONE for k in doc):
        return R0_BARE if bare_tombstones else R0_WRITE
    kind = kind_of(doc)
    if kind in CONTACT_KINDS:
        placed = WalkScope(user, settings, OverlayGraph(graph, {doc_id: contact_node(doc)}))
        return R5_IN if placed.depth(doc_id) is not None else R5_OUT
    facts = report_facts(doc) if kind == REPORT else None
    return read_rule(doc_id, kind, replication_keys(doc, kind, facts), facts, user, settings, scope, graph)


def body_readable(
    doc: Mapping[str, Any],
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    scope: Scope,
    *,
    bare_tombstones: bool = True,
) -> bool:
    """`body_rule`, allowed or not."""
    return body_rule(doc, user, settings, graph, scope, bare_tombstones=bare_tombstones).allowed


BARE_TOMBSTONE = frozenset({"_id", "_rev", "_deleted", "_revisions", "_conflicts", "_deleted_conflicts"})


def scope_inputs(user: UserCtx, settings: AppSettings) -> tuple[object, ...]:
    """Everything besides the shape of the tree below the facilities that decides what the
    user may read. When any of it changes, a client's feed must start over (backfill)."""
    return (
        sorted(user.facility_ids),
        sorted(user.roles),
        user.contact_id,
        replication_depths(user, settings),
        settings.scope_fingerprint(user),
    )
