"""The conflicting revisions (leaves besides the winner) an offline user may see.

The index judges a doc by its winner; a conflict leaf may hold other content (a move
into another area on one device, an edit on another), and a user must neither read it
nor learn its revision, nor be told of it in a feed they then cannot fetch: PouchDB stops
a whole pull when one revision it was told of cannot be fetched. So every leaf besides
the winner is judged on its own content before it is named anywhere (`_changes` with
`style=all_docs`, `_conflicts`, `_deleted_conflicts`, `open_revs=all`, `_revs_diff`).

What the rules read of a revision never changes, so it is kept (`leaf_cache.Revisions`,
bounded) and judged again, cheaply, against the tree as it stands; a leaf is read from
CouchDB once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from proxy.offline.view import UserView


async def servable(
    request: web.Request, view: UserView, db_path: str, pairs: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Of these (doc id, rev) pairs, those the user may be told of and served. A doc's
    current winner, as the index knows it, is judged by the index."""
    index = view.sync.index
    judged: set[tuple[str, str]] = set()
    others: list[tuple[str, str]] = []
    for doc_id, rev in pairs:
        winner = index.winner(doc_id)
        if winner is not None and rev == winner[0]:
            if index.is_readable_id(doc_id, view.user, view.settings):
                judged.add((doc_id, rev))
        else:
            others.append((doc_id, rev))
    if others:
        revisions = view.sync.revisions
        await revisions.fetch(view.sync.couch, db_path, others)
        for pair in others:
            _, kept = revisions.get(pair)
            if kept is not None and view.servable(kept):
                judged.add(pair)
    return judged


async def visible_leaves(
    request: web.Request, view: UserView, db_path: str, leaves: Mapping[str, Iterable[str]]
) -> dict[str, list[str]]:
    """For each doc, the leaves the user may be told of, in the order given."""
    pairs = [(doc_id, rev) for doc_id, revs in leaves.items() for rev in revs]
    ok = await servable(request, view, db_path, pairs)
    return {doc_id: [r for r in revs if (doc_id, r) in ok] for doc_id, revs in leaves.items()}


async def filter_conflicts(
    request: web.Request, view: UserView, db_path: str, docs: Iterable[dict[str, Any]]
) -> None:
    """Drop from each doc's `_conflicts` and `_deleted_conflicts` the leaves the user may not see."""
    docs = [
        d
        for d in docs
        if isinstance(d.get("_conflicts"), list) or isinstance(d.get("_deleted_conflicts"), list)
    ]
    if not docs:
        return
    named: dict[str, list[str]] = {}
    for doc in docs:
        revs = [*(doc.get("_conflicts") or []), *(doc.get("_deleted_conflicts") or [])]
        named.setdefault(str(doc["_id"]), []).extend(r for r in revs if isinstance(r, str))
    visible = await visible_leaves(request, view, db_path, named)
    for doc in docs:
        keep = set(visible.get(str(doc["_id"]), ()))
        for name in ("_conflicts", "_deleted_conflicts"):
            if isinstance(doc.get(name), list):
                doc[name] = [r for r in doc[name] if r in keep]
                if not doc[name]:
                    del doc[name]
