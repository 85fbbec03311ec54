"""Resolving a conflict and splitting a UUID collision: plans first, writes second."""

from __future__ import annotations

import uuid
from typing import Any

from proxy.access.kinds import CONTACT_KINDS, REPORT, contact_is_person, kind_of
from proxy.conflicts.model import (
    RESOLVED_MARK,
    MergeConflict,
    body,
    classify,
    common_ancestor,
    history,
    merge3,
    references,
    set_path,
)  # fmt: skip
from proxy.conflicts.store import ConflictStore
from proxy.couch.client import quote_id
from proxy.errors import BadRequest, Conflict, CouchgateError, NotFound

SPLIT_NAMESPACE = uuid.UUID("0d5e6c1a-3c7e-4f0a-8f86-6b8a51e9a2c4")


class Unmergeable(CouchgateError):
    status, error = 409, "conflict"

    def __init__(self, paths: list[list[Any]]) -> None:
        super().__init__("fields changed differently on both sides: nothing was written")
        self.paths = paths


def tombstone(doc_id: str, rev: str) -> dict[str, Any]:
    # Marked, so the deletions a resolution leaves behind never look like a user's.
    return {"_id": doc_id, "_rev": rev, "_deleted": True, RESOLVED_MARK: True}


async def resolve(
    store: ConflictStore, doc_id: str, request: dict[str, Any], dry_run: bool
) -> dict[str, Any]:
    leaves = await store.leaves(doc_id)  # read right before writing
    live = [leaf for leaf in leaves if not leaf.get("_deleted")]
    user_deletions = [leaf for leaf in leaves if leaf.get("_deleted") and not leaf.get(RESOLVED_MARK)]
    if len(live) + len(user_deletions) < 2:
        raise NotFound(f"{doc_id} has no conflicts")
    expected = request.get("leaves")
    current = sorted(leaf["_rev"] for leaf in live)
    if expected is not None and sorted(expected) != current:
        raise Conflict("the doc's leaves changed since they were read; nothing was written")
    strategy = request.get("strategy")
    if strategy == "pick":
        rev = request.get("rev")
        chosen = next((leaf for leaf in leaves if leaf["_rev"] == rev), None)
        if chosen is None:
            raise BadRequest(f"{rev} is not a leaf revision of {doc_id}")
        new_body: dict[str, Any] | None = None if chosen.get("_deleted") else body(chosen)
    elif strategy == "merge":
        if not isinstance(request.get("doc"), dict):
            raise BadRequest("strategy merge needs the merged doc as `doc`")
        new_body = body(request["doc"])
    elif strategy == "auto":
        new_body = await _auto(store, doc_id, live)
    else:
        raise BadRequest("strategy must be pick, merge or auto")
    winner = max(live, key=lambda leaf: (int(leaf["_rev"].split("-")[0]), leaf["_rev"])) if live else None
    docs: list[dict[str, Any]] = []
    if winner is not None:
        if new_body is None:
            docs.append(tombstone(doc_id, winner["_rev"]))
        else:
            docs.append({**new_body, "_id": doc_id, "_rev": winner["_rev"], **_attachments(winner)})
    docs += [tombstone(doc_id, leaf["_rev"]) for leaf in live if leaf is not winner]
    docs += [tombstone(doc_id, leaf["_rev"]) for leaf in user_deletions]
    answer: dict[str, Any] = {
        "ok": True,
        "id": doc_id,
        "strategy": strategy,
        "dry_run": dry_run,
        "docs": docs,
    }
    if dry_run:
        return answer
    rows = await store.bulk(docs)
    failed = [row for row in rows if "error" in row]
    if failed:
        raise Conflict(
            f"a leaf of {doc_id} moved while resolving ({len(failed)} of {len(docs)} writes refused)"
        )
    answer["rev"] = next((row.get("rev") for row in rows if "error" not in row), None)
    return answer


def _attachments(leaf: dict[str, Any]) -> dict[str, Any]:
    atts = leaf.get("_attachments")
    return {"_attachments": atts} if isinstance(atts, dict) else {}


async def _auto(store: ConflictStore, doc_id: str, live: list[dict[str, Any]]) -> dict[str, Any]:
    ancestor_rev = common_ancestor(live)
    if ancestor_rev is None:
        raise BadRequest("no common ancestor (a UUID collision?): use split, pick or merge")
    ancestor = await store.revision(doc_id, ancestor_rev)
    if ancestor is None:
        raise Conflict(
            f"the common ancestor {ancestor_rev} is no longer stored (compacted): use pick or merge"
        )
    merged = body(live[0])
    try:
        for leaf in live[1:]:
            merged = merge3(body(ancestor), merged, body(leaf))
    except MergeConflict as exc:
        raise Unmergeable(exc.paths) from exc
    return merged


def new_id(doc_id: str, leaf: dict[str, Any]) -> str:
    """Deterministic per leaf (from its first revision): repeating a split names it alike."""
    return str(uuid.uuid5(SPLIT_NAMESPACE, f"{doc_id}:{history(leaf)[-1]}"))


def suggest(path: list[Any], leaves: dict[str, dict[str, Any]], person_types: frozenset[str]) -> str | None:
    """The new id a reference should get when the doc types make it unambiguous
    (`leaves`: new id -> leaf): a contact or subject field points at the one person, a
    `parent` or `place_id` at the one place, a `report` field at the one report."""

    def of_kind(wanted: str) -> list[str]:
        found = []
        for new, leaf in leaves.items():
            kind = kind_of(leaf)
            if kind in CONTACT_KINDS:
                kind = "person" if contact_is_person(leaf, person_types) else "place"
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


async def split(store: ConflictStore, doc_id: str, request: dict[str, Any], dry_run: bool,
                person_types: frozenset[str]) -> dict[str, Any]:  # fmt: skip
    marker_path = f"_local/couchgate-split-{doc_id}"
    done = await _marker(store, marker_path)
    if done is not None:
        return {**done["plan"], "already_split": True, "dry_run": dry_run}
    leaves = [leaf for leaf in await store.leaves(doc_id) if not leaf.get("_deleted")]
    if len(leaves) < 2:
        raise NotFound(f"{doc_id} has no conflicting leaves to split")
    if classify(leaves) != "uuid_collision":
        raise BadRequest(f"{doc_id} is not a UUID collision (its leaves share history): resolve it instead")
    by_new_id = {new_id(doc_id, leaf): leaf for leaf in leaves}
    overrides = request.get("references") or {}
    if not isinstance(overrides, dict):
        raise BadRequest("references must be {doc id: {dotted path: new id}}")
    refs: list[dict[str, Any]] = []
    referring = await store.all_docs_with_reference(doc_id)
    for doc in referring:
        for path in references(doc, doc_id):
            dotted = ".".join(str(p) for p in path)
            chosen = (overrides.get(doc["_id"]) or {}).get(dotted)
            suggested = suggest(path, by_new_id, person_types)
            refs.append(
                {"doc_id": doc["_id"], "path": path, "suggested": suggested, "chosen": chosen or suggested}
            )
    plan = {
        "id": doc_id,
        "leaves": [
            {"rev": leaf["_rev"], "new_id": new, "type": leaf.get("type")} for new, leaf in by_new_id.items()
        ],
        "references": refs,
        "unresolved": sum(1 for r in refs if r["chosen"] is None),
    }
    if dry_run:
        return {**plan, "dry_run": True}
    if plan["unresolved"]:
        raise Conflict(
            f"{plan['unresolved']} references need a new id chosen in `references`; nothing was written"
        )
    created = [{**body(leaf), "_id": i, **_attachments(leaf)} for i, leaf in by_new_id.items()]
    await _write_new(store, created)
    by_doc: dict[str, dict[str, Any]] = {d["_id"]: d for d in referring}
    for ref in refs:
        set_path(by_doc[ref["doc_id"]], ref["path"], ref["chosen"])
    rows = await store.bulk(list(by_doc.values())) if by_doc else []
    if any("error" in row for row in rows):
        raise Conflict("a referring doc changed during the split: run it again (it is safe to repeat)")
    rows = await store.bulk([tombstone(doc_id, leaf["_rev"]) for leaf in leaves])
    if any("error" in row for row in rows):
        raise Conflict("the colliding doc changed during the split: run it again (it is safe to repeat)")
    await store.couch.json("PUT", f"{store.path}/{quote_id(marker_path)}", body={"plan": plan})
    return {**plan, "dry_run": False, "already_split": False}


async def _marker(store: ConflictStore, marker_path: str) -> dict[str, Any] | None:
    result = await store.couch.json("GET", f"{store.path}/{quote_id(marker_path)}")
    return result.body if result.ok and isinstance(result.body, dict) else None


async def _write_new(store: ConflictStore, docs: list[dict[str, Any]]) -> None:
    rows = await store.bulk(docs)
    for row in rows:
        if "error" in row and row["error"] != "conflict":
            raise Conflict(f"could not create {row.get('id')}: {row.get('reason')}")
