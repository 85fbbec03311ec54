"""What an offline user may read (pure, no I/O).

The rules, in the order they are applied to a doc (`entry_readable`):
1. global docs are readable by everyone;
2. other `_design/*` docs by no offline user;
3. a user-settings doc only by its own user (its `_id` is the user's doc id);
4. a task only by the user its `user` names;
5. a contact when the tree puts it in scope (`proxy.access.graph`), deleted or not;
6. a target when its `owner` is a contact in scope;
7. a report when its subject names a contact in scope (`graph.resolve`: shortcodes only
   from shortcode fields, held by exactly one contact, a live one), or, with
   `fields.needs_signoff`, a contact of its submitter's lineage is in scope, or it has no
   subject and the user may see unallocated reports; except
   7a. a private report about the user's own facility or contact whose submitter is
       outside the scope, never;
   7b. with a `report_depth`, a report whose contacts in scope all lie deeper than it,
       only when the user's own contact submitted it (unallocated ones are not limited);
8. anything else, never.

A value a user writes can therefore only ever name what the tree already gives them: a
shortcode never stands for an id, a user's doc id or `_unassigned`, and a deleted
contact's shortcode names nothing.

Bodies served to a user are judged on themselves (`body_readable`): a contact at the
place its own body gives it, so neither a stale index nor a past revision can show a doc
where it is no longer, or was never, in scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    if kind == GLOBAL:
        return True
    if kind == DESIGN:
        return False
    if kind == USER_SETTINGS:
        return doc_id == user.user_doc_id
    if kind == TASK:
        return bool(keys) and keys[0] == user.user_doc_id
    if kind in CONTACT_KINDS:
        return scope.depth(doc_id) is not None
    if kind == TARGET:
        return bool(keys) and scope.depth(keys[0]) is not None
    if kind == REPORT and facts is not None:
        return _report_readable(facts, user, settings, scope, graph)
    return False


def _report_readable(
    facts: ReportFacts, user: UserCtx, settings: AppSettings, scope: Scope, graph: ContactGraph
) -> bool:
    subject = resolve(facts.subject, facts.code_field, graph) if facts.subject is not None else None
    depths = [d for c in (subject, *facts.signoff) if c is not None and (d := scope.depth(c)) is not None]
    unassigned = facts.subject is None and scope.unassigned
    if not depths and not unassigned:
        return False
    own = {*user.facility_ids, *((user.contact_id,) if user.contact_id else ())}
    if facts.private and subject in own and (facts.submitter is None or scope.depth(facts.submitter) is None):
        return False
    _, report_depth = replication_depths(user, settings)
    if report_depth is not None and not unassigned and all(d > report_depth for d in depths):
        return facts.submitter is not None and facts.submitter == user.contact_id
    return True


def contact_node(doc: Mapping[str, Any]) -> ContactNode:
    """A contact's node as its own body places it (`live` unless the body is a tombstone)."""
    return ContactNode(str(doc["_id"]), parent_id(doc), shortcode(doc), doc.get("_deleted") is not True)


def body_readable(
    doc: Mapping[str, Any],
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    scope: Scope,
    *,
    bare_tombstones: bool = True,
) -> bool:
    """May the user see this body (any revision, about to be served)? A contact is judged
    at the place its own body gives it; other docs in the tree as `scope` sees it. A bare
    tombstone (no field besides `_id`, `_rev`, `_deleted`, `_revisions`) reveals nothing,
    so it may be served (`bare_tombstones`); as a write, it has nothing that puts it in
    anyone's scope."""
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str):
        return False
    if doc.get("_deleted") is True and all(k in BARE_TOMBSTONE for k in doc):
        return bare_tombstones
    kind = kind_of(doc)
    if kind in CONTACT_KINDS:
        placed = WalkScope(user, settings, OverlayGraph(graph, {doc_id: contact_node(doc)}))
        return placed.depth(doc_id) is not None
    facts = report_facts(doc) if kind == REPORT else None
    return entry_readable(doc_id, kind, replication_keys(doc, kind), facts, user, settings, scope, graph)


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
