"""What the conflict endpoints accept, checked before anything is read or written: a bad
body is the caller's 400, never a crash (500) or an upstream error (502)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.conflicts.model import META
from proxy.errors import BadRequest

STRATEGIES = ("pick", "merge", "auto")


@dataclass(frozen=True)
class ResolveRequest:
    strategy: str
    rev: str | None = None
    doc: dict[str, Any] | None = None
    leaves: tuple[str, ...] | None = None  # the leaf revs the caller saw (optimistic check)


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{name} must be a list of revision strings")
    return tuple(value)


def _only(payload: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def merged_doc(doc: object, doc_id: str) -> dict[str, Any]:
    """A merged body as given: an object whose top-level `_` fields are only the ones
    CouchDB knows (and couchgate sets itself), with the doc's own id if any."""
    if not isinstance(doc, dict):
        raise BadRequest("strategy merge needs the merged doc as the object `doc`")
    if "_id" in doc and doc["_id"] != doc_id:
        raise BadRequest("the merged doc's _id is not the conflicted doc's")
    reserved = sorted(k for k in doc if isinstance(k, str) and k.startswith("_") and k not in META)
    if reserved:
        raise BadRequest(
            f"top-level field {reserved[0]!r}: CouchDB reserves names that start with _ "
            "(to resolve as a deletion, pick the deleted leaf)"
        )
    return doc


def resolve_request(payload: Any, doc_id: str) -> ResolveRequest:
    if not isinstance(payload, dict):
        raise BadRequest("the body must be an object with a strategy")
    _only(payload, {"strategy", "rev", "doc", "leaves"})
    strategy = payload.get("strategy")
    if strategy not in STRATEGIES:
        raise BadRequest("strategy must be pick, merge or auto")
    leaves = _strings(payload["leaves"], "leaves") if payload.get("leaves") is not None else None
    if strategy == "pick":
        if not isinstance(payload.get("rev"), str):
            raise BadRequest("strategy pick needs the leaf revision to keep as `rev`")
        return ResolveRequest("pick", rev=payload["rev"], leaves=leaves)
    if strategy == "merge":
        return ResolveRequest("merge", doc=merged_doc(payload.get("doc"), doc_id), leaves=leaves)
    return ResolveRequest("auto", leaves=leaves)


@dataclass(frozen=True)
class SplitRequest:
    # referring doc id -> dotted path -> the new id that reference gets
    references: dict[str, dict[str, str]] = field(default_factory=dict)
    # root revision -> the leaf whose body that group's new doc gets (concurrent edits
    # inside a collision that do not merge cleanly)
    keep: dict[str, str] = field(default_factory=dict)


def _string_map(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"{name} must map strings to strings")
    return dict(value)


def split_request(payload: Any) -> SplitRequest:
    if not isinstance(payload, dict):
        raise BadRequest("the body must be an object")
    _only(payload, {"references", "keep"})
    raw = payload.get("references", {})
    if not isinstance(raw, dict):
        raise BadRequest("references must be {doc id: {dotted path: new id}}")
    refs = {doc: _string_map(paths, f"references[{doc!r}]") for doc, paths in raw.items()}
    return SplitRequest(refs, _string_map(payload.get("keep", {}), "keep"))
