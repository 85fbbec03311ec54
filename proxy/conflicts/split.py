"""Splitting a UUID collision: each doc that collided gets a new id of its own (its body
kept), every reference to the old id is repointed, and the colliding doc is deleted.
Planned first (`dry_run`), then written; safe to repeat.

A collision's leaves are grouped by their first revision (root): leaves with different
roots are different docs; leaves with the same root are a concurrent edit of one of them.
Such a group becomes one new doc: its clean three-way merge, or the leaf the caller keeps
(`keep: {root: rev}`); when it does not merge cleanly and no leaf is kept, nothing is
written. No leaf is deleted unless its group has its new doc.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from proxy.access.kinds import CONTACT_KINDS, REPORT, contact_is_person, kind_of
from proxy.conflicts.bodies import SplitRequest
from proxy.conflicts.model import body, classify, references, root, set_path, winner
from proxy.conflicts.service import Unmergeable, attachments, merge_leaves, tombstone
from proxy.conflicts.store import ConflictStore
from proxy.couch.client import quote_id
from proxy.errors import BadRequest, Conflict, DetailedConflict, NotFound

SPLIT_NAMESPACE = uuid.UUID("0d5e6c1a-3c7e-4f0a-8f86-6b8a51e9a2c4")


def new_id(doc_id: str, root_rev: str) -> str:
    """Deterministic per root: repeating a split names each new doc alike."""
    return str(uuid.uuid5(SPLIT_NAMESPACE, f"{doc_id}:{root_rev}"))


@dataclass
class Group:
    root: str
    leaves: list[dict[str, Any]]
    new_id: str
    doc: dict[str, Any]  # the new doc's body
    origin: str  # "leaf", "merge" or "keep"

    def entry(self) -> dict[str, Any]:
        return {
            "rev": winner(self.leaves)["_rev"],
            "revs": sorted(leaf["_rev"] for leaf in self.leaves),
            "root": self.root,
            "new_id": self.new_id,
            "type": self.doc.get("type"),
            "from": self.origin,
        }


def suggest(path: list[Any], docs: dict[str, dict[str, Any]], person_types: frozenset[str]) -> str | None:
    """The new id a reference should get when the doc types make it unambiguous
    (`docs`: new id -> body): a contact or subject field points at the one person, a
    `parent` or `place_id` at the one place, a `report` field at the one report."""

    def of_kind(wanted: str) -> list[str]:
        found = []
        for new, doc in docs.items():
            kind = kind_of(doc)
            if kind in CONTACT_KINDS:
                kind = "person" if contact_is_person(doc, person_types) else "place"
            if kind == wanted:
                found.append(new)
        return found

    words = {str(p) for p in path}
    rules = (
        ({"parent", "place_id"}, "place"),
        ({"contact", "patient_id", "patient_uuid", "contact_id", "owner"}, "person"),
        ({"report", "report_id"}, REPORT),
    )
    for triggers, kind in rules:
        if words & triggers and len(matches := of_kind(kind)) == 1:
            return matches[0]
    return None


async def _groups(
    store: ConflictStore, doc_id: str, live: list[dict[str, Any]], keep: dict[str, str]
) -> list[Group]:
    by_root: dict[str, list[dict[str, Any]]] = {}
    for leaf in live:
        by_root.setdefault(root(leaf), []).append(leaf)
    unknown = sorted(set(keep) - set(by_root))
    if unknown:
        raise BadRequest(f"keep names {unknown[0]!r}, which is not the first revision of a leaf group")
    groups = []
    for first, leaves in sorted(by_root.items()):
        top = dict(winner(leaves))
        if len(leaves) == 1:
            doc, origin = body(top), "leaf"
        elif first in keep:
            kept = next((leaf for leaf in leaves if leaf["_rev"] == keep[first]), None)
            if kept is None:
                raise BadRequest(f"{keep[first]} is not a leaf of the group that starts at {first}")
            top, doc, origin = kept, body(kept), "keep"
        else:
            try:
                doc, origin = await merge_leaves(store, doc_id, leaves), "merge"
            except (Unmergeable, Conflict) as exc:
                revs = sorted(leaf["_rev"] for leaf in leaves)
                raise DetailedConflict(
                    f"leaves {', '.join(revs)} share their first revision {first}: they are a concurrent "
                    f"edit of one doc inside the collision and do not merge cleanly ({exc.reason}); choose "
                    f"the leaf to keep with {{\"keep\": {{\"{first}\": REV}}}}; nothing was written",
                    root=first, leaves=revs, fields=getattr(exc, "paths", []),
                ) from exc  # fmt: skip
        groups.append(Group(first, leaves, new_id(doc_id, first), {**doc, **attachments(top)}, origin))
    return groups


def _choices(request: SplitRequest, new_ids: set[str]) -> None:
    for doc, paths in request.references.items():
        for path, chosen in paths.items():
            if chosen not in new_ids:
                raise BadRequest(f"references[{doc!r}][{path!r}]: {chosen!r} is not a new id of this split")


async def _stale_choices(store: ConflictStore, request: SplitRequest, known: set[tuple[str, str]],
                         new_ids: set[str]) -> None:  # fmt: skip
    """Choices for paths that are not references to the old id are refused, except those
    an earlier, interrupted run already applied (so the confirmed call can be repeated)."""
    chosen = [(doc, path) for doc, paths in request.references.items() for path in paths]
    rest = [pair for pair in chosen if pair not in known]
    if not rest:
        return
    current = await store.winners(sorted({doc for doc, _ in rest}))
    for doc, path in rest:
        value: Any = current.get(doc)
        for key in path.split("."):
            if isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                value = value.get(key) if isinstance(value, dict) else None
        if value not in new_ids:
            raise BadRequest(f"references[{doc!r}][{path!r}] is not a reference to the split doc")


async def split(store: ConflictStore, doc_id: str, request: SplitRequest, dry_run: bool,
                person_types: frozenset[str]) -> dict[str, Any]:  # fmt: skip
    marker_path = f"_local/couchgate-split-{doc_id}"
    done = await _marker(store, marker_path)
    if done is not None:
        return {**done["plan"], "already_split": True, "dry_run": dry_run}
    live = [leaf for leaf in await store.leaves(doc_id) if not leaf.get("_deleted")]
    if len(live) < 2:
        raise NotFound(f"{doc_id} has no conflicting leaves to split")
    if classify(live) != "uuid_collision":
        raise BadRequest(f"{doc_id} is not a UUID collision (its leaves share history): resolve it instead")
    groups = await _groups(store, doc_id, live, request.keep)
    docs = {group.new_id: group.doc for group in groups}
    _choices(request, set(docs))
    refs: list[dict[str, Any]] = []
    referring = await store.all_docs_with_reference(doc_id)
    for doc in referring:
        for path in references(doc, doc_id):
            chosen = request.references.get(doc["_id"], {}).get(".".join(map(str, path)))
            suggested = suggest(path, docs, person_types)
            refs.append(
                {"doc_id": doc["_id"], "path": path, "suggested": suggested, "chosen": chosen or suggested}
            )
    known = {(r["doc_id"], ".".join(map(str, r["path"]))) for r in refs}
    await _stale_choices(store, request, known, set(docs))
    plan = {
        "id": doc_id,
        "leaves": [g.entry() for g in groups],
        "references": refs,
        "unresolved": sum(1 for r in refs if r["chosen"] is None),
    }
    if dry_run:
        return {**plan, "dry_run": True}
    if plan["unresolved"]:
        raise Conflict(
            f"{plan['unresolved']} references need a new id chosen in `references`; nothing was written"
        )
    await _write(store, doc_id, groups, live, referring, refs)
    await store.couch.json("PUT", f"{store.path}/{quote_id(marker_path)}", body={"plan": plan})
    return {**plan, "dry_run": False, "already_split": False}


async def _write(store: ConflictStore, doc_id: str, groups: list[Group], live: list[dict[str, Any]],
                 referring: list[dict[str, Any]], refs: list[dict[str, Any]]) -> None:  # fmt: skip
    rows = await store.bulk([{**g.doc, "_id": g.new_id} for g in groups])
    created = {row.get("id") for row in rows if "error" not in row or row["error"] == "conflict"}
    failed = [row for row in rows if "error" in row and row["error"] != "conflict"]
    if failed:
        raise Conflict(f"could not create {failed[0].get('id')}: {failed[0].get('reason')}")
    by_doc: dict[str, dict[str, Any]] = {d["_id"]: d for d in referring}
    for ref in refs:
        set_path(by_doc[ref["doc_id"]], ref["path"], ref["chosen"])
    rows = await store.bulk(list(by_doc.values())) if by_doc else []
    if any("error" in row for row in rows):
        raise Conflict("a referring doc changed during the split: run it again (it is safe to repeat)")
    # Never delete a leaf whose body is not carried by a new doc that exists.
    carried = {leaf["_rev"] for g in groups if g.new_id in created for leaf in g.leaves}
    if carried != {leaf["_rev"] for leaf in live}:
        raise RuntimeError(f"split of {doc_id}: a leaf has no new doc; refusing to delete it")
    rows = await store.bulk([tombstone(doc_id, leaf["_rev"]) for leaf in live])
    if any("error" in row for row in rows):
        raise Conflict("the colliding doc changed during the split: run it again (it is safe to repeat)")


async def _marker(store: ConflictStore, marker_path: str) -> dict[str, Any] | None:
    result = await store.couch.json("GET", f"{store.path}/{quote_id(marker_path)}")
    return result.body if result.ok and isinstance(result.body, dict) else None
