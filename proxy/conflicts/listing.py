"""What the read endpoints answer: a page of conflicted docs, and one conflict explained."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.conflicts.model import body, classify, common_ancestor, conflicting, diff, winner
from proxy.conflicts.store import ConflictStore
from proxy.errors import NotFound

# Leaf reads in flight for one page: enough to hide latency, few enough to leave CouchDB
# (and its connection pool) to everyone else.
LEAF_READS = 8


async def list_page(
    store: ConflictStore, limit: int, after: str | None, update: str
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the conflicts view, each doc classified. Classifying needs every leaf's
    history, and deleted leaves' bodies to tell a user's deletion from a resolution's
    tombstone: one `open_revs=all` read per doc, a few at a time. (The view row's revs are
    not enough: a server may not pass `_deleted_conflicts` to views, and a row read with
    update=lazy may be stale.)"""
    rows, after = await store.page(limit, after, update)
    gate = asyncio.Semaphore(LEAF_READS)

    async def leaves_of(doc_id: str) -> list[dict[str, Any]]:
        async with gate:
            try:
                return await store.leaves(doc_id)
            except NotFound:
                return []  # purged since the index was read

    all_leaves = await asyncio.gather(*(leaves_of(row["id"]) for row in rows))
    listed: list[dict[str, Any]] = []
    for row, leaves in zip(rows, all_leaves, strict=True):
        counting = conflicting(leaves)
        if len(counting) < 2:
            continue  # resolved after the index was last brought up to date (update=lazy)
        top = winner(counting)
        listed.append({
            "id": row["id"],
            "type": (row.get("value") or {}).get("type"),
            "winner": top["_rev"],
            "conflicts": [leaf["_rev"] for leaf in counting if leaf is not top and not leaf.get("_deleted")],
            "deleted": [leaf["_rev"] for leaf in counting if leaf.get("_deleted")],
            "classification": classify(leaves),
        })  # fmt: skip
    return listed, after


async def describe(store: ConflictStore, doc_id: str) -> dict[str, Any]:
    """Every leaf that counts, the common ancestor when CouchDB still has it, and each
    leaf's field diff against it (against the winner when there is none)."""
    leaves = await store.leaves(doc_id)
    counting = conflicting(leaves)
    if len(counting) < 2:
        # A resolved doc keeps only the resolution's marked tombstones: not a conflict.
        raise NotFound(f"{doc_id} has no conflicts")
    top = winner(counting)
    live = [leaf for leaf in counting if not leaf.get("_deleted")]
    ancestor_rev = common_ancestor(live) if len(live) > 1 else common_ancestor(counting)
    ancestor = await store.revision(doc_id, ancestor_rev) if ancestor_rev else None
    against = "ancestor" if ancestor is not None else "winner"
    base = body(ancestor if ancestor is not None else top)
    return {
        "id": doc_id,
        "winner": top["_rev"],
        "classification": classify(leaves),
        "leaves": counting,
        "ancestor": {"rev": ancestor_rev, "available": ancestor is not None, "doc": ancestor},
        "diffs": {leaf["_rev"]: {"against": against, "changes": diff(base, body(leaf))} for leaf in counting},
    }
