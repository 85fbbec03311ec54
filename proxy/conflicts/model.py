"""Conflicts as data (pure, no I/O): revision histories, classification, field diffs, the
three-way merge, and references to a doc id anywhere in other docs.

A leaf is `{"_rev", "_revisions": {"start", "ids"}, ...}` as `open_revs=all&revs=true`
returns it. The leaves that *count* (`conflicting`) are the live ones and the deletions a
person made; the tombstones couchgate writes when it resolves carry `couchgate_resolved`
and never count, so a resolved doc is not a conflict any more. Classification:
`delete_vs_edit` when a counting leaf is a deletion, `concurrent_edit` when the live leaves
share an ancestor, `uuid_collision` when they do not (different first revisions: two docs
that happen to have the same id).

JSON values are compared with their type (`same`): in Python `1 == True`, in JSON a change
from 1 to true is a change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from proxy.couch.docs import history

Leaf = TypeVar("Leaf", bound=Mapping[str, Any])  # a leaf revision as the caller holds it

META = {"_rev", "_revisions", "_conflicts", "_deleted_conflicts", "_id", "_attachments"}
RESOLVED_MARK = "couchgate_resolved"
MAX_DEPTH = 32


def common_ancestor(leaves: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest revision every leaf descends from, or None (a UUID collision)."""
    if not leaves:
        return None
    shared = set(history(leaves[0]))
    for leaf in leaves[1:]:
        shared &= set(history(leaf))
    for rev in history(leaves[0]):
        if rev in shared:
            return rev
    return None


def root(leaf: Mapping[str, Any]) -> str:
    """The oldest revision the leaf's history still names (its first one, unless pruned)."""
    return history(leaf)[-1]


def is_user_deletion(leaf: Mapping[str, Any]) -> bool:
    return leaf.get("_deleted") is True and not leaf.get(RESOLVED_MARK)


def conflicting(leaves: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The leaves a person has to reconcile: live leaves and unmarked deletions. None when
    no leaf is live (the doc is deleted whichever deletion wins)."""
    live = [leaf for leaf in leaves if not leaf.get("_deleted")]
    return [*live, *(leaf for leaf in leaves if is_user_deletion(leaf))] if live else []


def winner(leaves: Sequence[Leaf]) -> Leaf:
    """CouchDB's winning leaf of a non-empty list: live before deleted, then the longest
    history, then the highest revision id."""
    return max(leaves, key=lambda leaf: (not leaf.get("_deleted"), generation(leaf["_rev"]), leaf["_rev"]))


def generation(rev: object) -> int:
    """A revision's generation (the number before the dash); 0 for anything else."""
    head = rev.partition("-")[0] if isinstance(rev, str) else ""
    return int(head) if head.isdigit() else 0


def classify(leaves: Sequence[Mapping[str, Any]]) -> str:
    counting = conflicting(leaves)
    if any(leaf.get("_deleted") for leaf in counting):
        return "delete_vs_edit"
    live = [leaf for leaf in leaves if not leaf.get("_deleted")]
    return "concurrent_edit" if common_ancestor(live) is not None else "uuid_collision"


def body(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (doc or {}).items() if k not in META}


def diff(before: Any, after: Any, path: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Field-level differences, as `{"path": [...], "op": added|removed|changed, ...}`."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        ops: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            if key in META and not path:
                continue
            if key not in after:
                ops.append({"path": [*path, key], "op": "removed", "before": before[key]})
            elif key not in before:
                ops.append({"path": [*path, key], "op": "added", "after": after[key]})
            else:
                ops += diff(before[key], after[key], (*path, key))
        return ops
    if same(before, after):
        return []
    return [{"path": list(path), "op": "changed", "before": before, "after": after}]


class MergeConflict(Exception):
    def __init__(self, paths: list[list[Any]]) -> None:
        super().__init__(f"{len(paths)} fields changed differently on both sides")
        self.paths = paths


def same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, and 1 and 1.0 are one JSON number."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _contains(items: list[Any], item: Any) -> bool:
    return any(same(item, other) for other in items)


def _grown(base: list[Any], side: list[Any]) -> bool:
    return all(_contains(side, item) for item in base)


def merge3(base: Any, left: Any, right: Any, path: tuple[Any, ...] = ()) -> Any:
    """Combine two edits of `base`. A field changed on one side only takes that change;
    arrays that only grew on both sides are unioned (base order, then left's additions,
    then right's); anything else changed differently on both sides is a conflict."""
    conflicts: list[list[Any]] = []
    merged = _merge(base, left, right, path, conflicts)
    if conflicts:
        raise MergeConflict(conflicts)
    return merged


_ABSENT = object()


def _merge(base: Any, left: Any, right: Any, path: tuple[Any, ...], conflicts: list[list[Any]]) -> Any:
    if same(left, right):
        return left
    if same(left, base):
        return right
    if same(right, base):
        return left
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        base_map = base if isinstance(base, Mapping) else {}
        out: dict[str, Any] = {}
        for key in list(dict.fromkeys([*left, *right])):
            value = _merge(base_map.get(key, _ABSENT), left.get(key, _ABSENT), right.get(key, _ABSENT),
                           (*path, key), conflicts)  # fmt: skip
            if value is not _ABSENT:
                out[key] = value
        return out
    if isinstance(left, list) and isinstance(right, list):
        base_list = base if isinstance(base, list) else []
        if _grown(base_list, left) and _grown(base_list, right):
            union = list(base_list)
            for item in [*left, *right]:
                if not _contains(union, item):
                    union.append(item)
            return union
    conflicts.append(list(path))
    return left


def references(doc: Any, target: str, path: tuple[Any, ...] = (), depth: int = 0) -> list[list[Any]]:
    """Every path in `doc` whose value is the string `target` (at any depth)."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(doc, str):
        return [list(path)] if doc == target and path and path[0] != "_id" else []
    if isinstance(doc, Mapping):
        return [
            p
            for k, v in doc.items()
            if k not in ("_rev", "_revisions")
            for p in references(v, target, (*path, k), depth + 1)
        ]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in references(v, target, (*path, i), depth + 1)]
    return []


def set_path(doc: dict[str, Any], path: Sequence[Any], value: Any) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
