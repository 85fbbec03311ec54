"""What an import does with one input item (pure, no I/O): unwrap, check, compare.

Input items may be docs, `_all_docs` rows (`{"id", "key", "value", "doc": {...}}`) or
`{"doc": ...}` wrappers; only the top level is unwrapped, nested objects are never
touched. `_rev` and other revision metadata from the input are dropped: the target
decides revisions. A doc without `_id` gets one derived from its content and position,
so a retried import names it the same way and creates no duplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

REVISION_FIELDS = ("_rev", "_revisions", "_conflicts", "_deleted_conflicts", "_local_seq", "_revs_info")
ID_NAMESPACE = uuid.UUID("6f1c5a52-3b0e-4e55-9d4b-2c1f0f5f7a11")
ROW_KEYS = {"id", "key", "value", "doc", "error"}


class Invalid(ValueError):
    """The item cannot be imported; the message says why."""


@dataclass(frozen=True)
class Prepared:
    index: int
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.doc["_id"])


def unwrap(item: Any) -> Any:
    """The doc inside an `_all_docs` row or a `{"doc": ...}` wrapper; anything else as is."""
    if isinstance(item, dict) and "doc" in item and set(item) <= ROW_KEYS:
        if item.get("doc") is None:
            raise Invalid(
                f"row {item.get('id') or item.get('key')!r} carries no doc (export with include_docs=true)"
            )
        return item["doc"]
    return item


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The content that decides `unchanged`: no revision fields, attachments by digest."""
    body = {k: v for k, v in doc.items() if k not in REVISION_FIELDS and k != "_attachments"}
    attachments = doc.get("_attachments")
    if isinstance(attachments, Mapping):
        body["_attachments"] = {
            name: [att.get("content_type"), att.get("digest") or digest_of(att)]
            for name, att in sorted(attachments.items())
            if isinstance(att, Mapping)
        }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def digest_of(att: Mapping[str, Any]) -> str | None:
    data = att.get("data")
    if not isinstance(data, str):
        return None
    return "md5-" + base64.b64encode(hashlib.md5(base64.b64decode(data)).digest()).decode()  # noqa: S324 - CouchDB's digest


def prepare(index: int, item: Any, *, is_admin: bool, max_doc_bytes: int) -> Prepared:
    doc = unwrap(item)
    if not isinstance(doc, dict):
        raise Invalid("not a JSON object")
    doc = {k: v for k, v in doc.items() if k not in REVISION_FIELDS}
    if doc.get("_deleted") is True:
        raise Invalid("deleted docs (tombstones) are not imported")
    doc_id = doc.get("_id")
    if doc_id is None:
        doc["_id"] = str(uuid.uuid5(ID_NAMESPACE, f"{index}:{canonical(doc).decode()}"))
    elif not isinstance(doc_id, str) or not doc_id:
        raise Invalid("_id must be a non-empty string")
    elif doc_id.startswith("_local/"):
        raise Invalid("_local docs are not imported")
    elif doc_id.startswith("_design/"):
        if not is_admin:
            raise Invalid("only admins may import design docs")
    elif doc_id.startswith("_"):
        raise Invalid("_id may not start with an underscore")
    attachments = doc.get("_attachments")
    if attachments is not None:
        if not isinstance(attachments, dict):
            raise Invalid("_attachments must be an object")
        for name, att in attachments.items():
            if not isinstance(att, dict) or not isinstance(att.get("data"), str):
                raise Invalid(f"attachment {name!r} has no inline data (export with attachments=true)")
            try:
                base64.b64decode(att["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Invalid(f"attachment {name!r} is not valid base64") from exc
    if len(orjson.dumps(doc)) > max_doc_bytes:
        raise Invalid(f"doc is larger than {max_doc_bytes} bytes")
    return Prepared(index, doc)


def same_content(imported: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    return stored is not None and canonical(imported) == canonical(stored)


def branch_rev(doc: Mapping[str, Any]) -> str:
    """A deterministic first revision for `keep_both`: a retry adds no second branch."""
    return "1-" + hashlib.md5(canonical(doc)).hexdigest()  # noqa: S324 - a CouchDB-style rev id
