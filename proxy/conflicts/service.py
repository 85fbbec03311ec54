"""Resolving a conflict: the plan first, then the winner alone, then the tombstones.

CouchDB's `_bulk_docs` is not atomic: each row succeeds or fails on its own. So the merged
winner is written first, alone, on top of its leaf: if a leaf moved since it was read, that
write fails and nothing at all was written. Only then are the other leaves deleted, in one
`_bulk_docs`; if one of them moved meanwhile, the winner (the merged body) is kept and the
answer says exactly which writes were made, so a second call can finish the job.
"""

from __future__ import annotations

from typing import Any, Protocol

from proxy.audit.api import Outcome
from proxy.conflicts.bodies import ResolveRequest
from proxy.conflicts.model import (
    RESOLVED_MARK,
    MergeConflict,
    body,
    classify,
    common_ancestor,
    conflicting,
    merge3,
    winner,
)  # fmt: skip
from proxy.conflicts.store import ConflictStore, row_error
from proxy.couch.docs import history
from proxy.errors import (
    BadRequest,
    Conflict,
    CouchgateError,
    Detailed,
    DetailedConflict,
    NotFound,
    UpstreamError,
)


class Recorder(Protocol):
    """Where a resolution's writes are audited (a request's caller, or the monitor)."""

    def __call__(self, action: str, outcome: Outcome, **fields: Any) -> None: ...


class PartlyWritten(Detailed):
    """CouchDB failed after the winner was written: the same status, and what was written."""

    def __init__(self, cause: CouchgateError, written: list[dict[str, Any]]) -> None:
        super().__init__(
            f"{cause.reason}; the winner was written but the other leaves were not all deleted "
            "(see `written`): resolve again",
            written=written,
        )
        self.status, self.error = cause.status, cause.error


UNMERGEABLE = "fields changed differently on both sides: nothing was written"


class Unmergeable(DetailedConflict):
    def __init__(self, paths: list[list[Any]], reason: str | None = None) -> None:
        super().__init__(reason or UNMERGEABLE, fields=paths)
        self.paths = paths


def tombstone(doc_id: str, rev: str) -> dict[str, Any]:
    # Marked, so the deletions a resolution leaves behind never look like a user's.
    return {"_id": doc_id, "_rev": rev, "_deleted": True, RESOLVED_MARK: True}


def attachments(leaf: dict[str, Any]) -> dict[str, Any]:
    atts = leaf.get("_attachments")
    return {"_attachments": atts} if isinstance(atts, dict) else {}


async def resolve(
    store: ConflictStore, doc_id: str, request: ResolveRequest, dry_run: bool, audit: Recorder
) -> dict[str, Any]:
    leaves = await store.leaves(doc_id)  # read right before writing
    counting = [dict(leaf) for leaf in conflicting(leaves)]
    if len(counting) < 2:
        raise NotFound(f"{doc_id} has no conflicts")
    if request.leaves is not None and sorted(request.leaves) != sorted(leaf["_rev"] for leaf in counting):
        raise Conflict("the doc's leaves changed since they were read; nothing was written")
    live = [leaf for leaf in counting if not leaf.get("_deleted")]
    # `base`: the leaf the winner is written on top of; None when a deletion is picked
    # (that deletion already exists: only the other leaves are deleted).
    base: dict[str, Any] | None
    keep: dict[str, Any]
    if request.strategy == "pick":
        found = next((leaf for leaf in counting if leaf["_rev"] == request.rev), None)
        if found is None:
            raise BadRequest(f"{request.rev} is not a conflicting leaf revision of {doc_id}")
        keep = found
        base = None if found.get("_deleted") else found
        new_body = body(found)
    else:
        base = keep = winner(live)
        new_body = body(request.doc) if request.strategy == "merge" else await _auto(store, doc_id, leaves)
    new_winner = None
    if base is not None:
        new_winner = {**new_body, "_id": doc_id, "_rev": base["_rev"], **attachments(base)}
    others = [leaf["_rev"] for leaf in counting if leaf["_rev"] != keep["_rev"]]
    tombstones = [tombstone(doc_id, rev) for rev in others]
    answer: dict[str, Any] = {
        "ok": True,
        "id": doc_id,
        "strategy": request.strategy,
        "dry_run": dry_run,
        "docs": [*([new_winner] if new_winner else []), *tombstones],
    }
    if dry_run:
        return answer
    written: list[dict[str, Any]] = []
    if new_winner is not None and base is not None:
        rows = await store.bulk([new_winner])
        if not rows:
            raise UpstreamError("CouchDB answered no row for the winner")
        row = rows[0]
        if "error" in row or not isinstance(row.get("rev"), str):
            error = row_error(row)
            if isinstance(error, Conflict):
                raise Conflict(
                    f"leaf {base['_rev']} of {doc_id} moved since it was read; nothing was written"
                )
            raise error
        written.append({"kind": "winner", "on": base["_rev"], "rev": row["rev"]})
        audit("resolve", "written", doc_id=doc_id, rev_before=base["_rev"], rev_after=row["rev"],
              details={"strategy": request.strategy, "kind": "winner"})  # fmt: skip
    try:
        await _delete_others(store, doc_id, tombstones, audit, request.strategy, written)
    except Detailed:
        raise
    except CouchgateError as exc:
        if not written:
            raise
        raise PartlyWritten(exc, written) from exc
    answer["rev"] = written[0]["rev"] if new_winner is not None else None
    answer["written"] = written
    return answer


async def _delete_others(
    store: ConflictStore,
    doc_id: str,
    tombstones: list[dict[str, Any]],
    audit: Recorder,
    strategy: str,
    written: list[dict[str, Any]],
) -> None:
    """Delete the other leaves in one `_bulk_docs`, adding each write to `written`; a
    refused row is a 409 that lists every write made (the winner's included)."""
    rows = await store.bulk(tombstones)
    new_revs = [row["rev"] for row in rows if "error" not in row and isinstance(row.get("rev"), str)]
    # Rows of one id do not say which leaf each deleted (nor come in order on every
    # server): each new tombstone's parent, read back, does.
    found = await store.revisions((doc_id, rev) for rev in new_revs)
    parents = {rev: _parent(found.get((doc_id, rev))) for rev in new_revs}
    deleted = [{"kind": "tombstone", "on": parents[rev], "rev": rev} for rev in new_revs]
    for entry in deleted:
        audit("resolve", "written", doc_id=doc_id, rev_before=entry["on"], rev_after=entry["rev"],
              details={"strategy": strategy, "kind": "tombstone"})  # fmt: skip
    written += deleted
    if len(new_revs) == len(tombstones):
        return
    gone = {entry["on"] for entry in deleted}
    refused = [doc["_rev"] for doc in tombstones if doc["_rev"] not in gone]
    errors = sorted({str(row.get("error")) for row in rows if "error" in row})
    reason = (
        f"{len(refused)} of {len(tombstones)} leaves of {doc_id} changed before they could be deleted; "
        f"{len(written)} writes were made (listed in `written`) and the doc is still conflicted: "
        "resolve it again"
    )
    audit("resolve", "conflict", doc_id=doc_id, reason=reason, details={"refused": refused, "errors": errors})
    raise DetailedConflict(reason, written=written, refused=refused)


def _parent(doc: dict[str, Any] | None) -> str | None:
    path = history(doc) if doc else []
    return path[1] if len(path) > 1 else None


async def _auto(store: ConflictStore, doc_id: str, leaves: list[dict[str, Any]]) -> dict[str, Any]:
    kind = classify(leaves)
    if kind == "delete_vs_edit":
        # Merging would quietly drop the deletion (or the edit): a person decides.
        raise Unmergeable([["_deleted"]], "one leaf deletes the doc and another edits it: pick one")
    if kind == "uuid_collision":
        raise BadRequest("no common ancestor (a UUID collision?): use split, pick or merge")
    live = [leaf for leaf in leaves if not leaf.get("_deleted")]
    return await merge_leaves(store, doc_id, live)


async def merge_leaves(store: ConflictStore, doc_id: str, live: list[dict[str, Any]]) -> dict[str, Any]:
    """The three-way merge of leaves that share an ancestor, or Unmergeable."""
    ancestor_rev = common_ancestor(live)
    if ancestor_rev is None:
        raise BadRequest("these leaves share no ancestor: they cannot be merged")
    ancestor = await store.revision(doc_id, ancestor_rev)
    if ancestor is None:
        raise Conflict(f"the common ancestor {ancestor_rev} is no longer stored (compacted): pick or merge")
    merged = body(live[0])
    try:
        for leaf in live[1:]:
            merged = merge3(body(ancestor), merged, body(leaf))
    except MergeConflict as exc:
        raise Unmergeable(exc.paths) from exc
    return merged
