"""What an import does with one input item (pure, no I/O): unwrap, check, compare.

Input items may be docs, `_all_docs` rows (`{"id", "key", "value", "doc": {...}}`) or
`{"doc": ...}` wrappers; only the top level is unwrapped, nested objects are never
touched. `_rev` and other revision metadata from the input are dropped: the target
decides revisions. A doc without `_id` gets one derived from its content and position,
so a retried import names it the same way and creates no duplicate.

Size limits, as CouchDB counts them: `max_document_size` applies to the JSON body
without inline attachment data (CouchDB stores attachments apart and limits them with
`max_attachment_size`, not the doc size), so a doc is measured with each attachment's
`data` left out; the attachments are limited by their decoded size together
(`max_attachment_bytes`, the request body limit by default: an import line or JSON body
has its own, smaller limit anyway, which binds first).
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

from proxy.conflicts.model import generation
from proxy.couch.validate import DocInvalid, default_content_types, validate_doc

REVISION_FIELDS = ("_rev", "_revisions", "_conflicts", "_deleted_conflicts", "_local_seq", "_revs_info")
# Top-level fields CouchDB accepts that start with `_` (after revision fields are dropped);
# any other one makes CouchDB refuse the whole `_bulk_docs` request.
SPECIAL_FIELDS = {"_id", "_attachments", "_deleted"}
ID_NAMESPACE = uuid.UUID("6f1c5a52-3b0e-4e55-9d4b-2c1f0f5f7a11")
ROW_KEYS = {"id", "key", "value", "doc", "error"}
# orjson refuses to encode deeper than this; CouchDB has no sane use for more either.
TOO_DEEP = "the doc is nested too deeply (or holds a value JSON cannot carry)"


class Invalid(ValueError):
    """The item cannot be imported; the message says why."""


@dataclass(frozen=True, slots=True)
class Prepared:
    index: int
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.doc["_id"])


def _is_row(item: dict[str, Any]) -> bool:
    """An `_all_docs` row or a `{"doc": ...}` wrapper (a doc has an `_id`; rows do not)."""
    if "_id" in item or not set(item) <= ROW_KEYS:
        return False
    return "doc" in item or ("error" in item and ("key" in item or "id" in item))


def unwrap(item: Any) -> Any:
    """The doc inside an `_all_docs` row or a `{"doc": ...}` wrapper; anything else as is."""
    if not isinstance(item, dict) or not _is_row(item):
        return item
    name = item.get("id") or item.get("key")
    if "error" in item:  # `_all_docs?keys=` answers a missing id with {"key", "error"}
        raise Invalid(f"{name!r} was not found in the export (the row says {item['error']!r})")
    doc = item.get("doc")
    if doc is None:
        value = item.get("value")
        if isinstance(value, dict) and value.get("deleted") is True:
            raise Invalid(f"row {name!r} is a deleted doc in the export; deletions are not imported")
        raise Invalid(f"row {name!r} carries no doc (export with include_docs=true)")
    return doc


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The content that decides `unchanged`: no revision fields, attachments by digest.
    Raises Invalid for content JSON cannot carry (call it on checked docs only)."""
    body = {k: v for k, v in doc.items() if k not in REVISION_FIELDS and k != "_attachments"}
    attachments = doc.get("_attachments")
    if isinstance(attachments, Mapping):
        body["_attachments"] = {
            name: [att.get("content_type"), digest_of(att) or att.get("digest")]
            for name, att in sorted(attachments.items())
            if isinstance(att, Mapping)
        }
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise Invalid(TOO_DEEP) from exc


def digest_of(att: Mapping[str, Any]) -> str | None:
    """The MD5 digest of inline data. Not always CouchDB's `digest`: CouchDB 3 stores
    compressible types gzipped and digests the stored bytes."""
    data = att.get("data")
    if not isinstance(data, str):
        return None
    return "md5-" + base64.b64encode(hashlib.md5(_decode(data)).digest()).decode()  # noqa: S324 - CouchDB's digest


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid("not valid base64") from exc


def _check_attachments(attachments: Any, max_attachment_bytes: int) -> None:
    if not isinstance(attachments, dict):
        raise Invalid("_attachments must be an object")
    total = 0
    for name, att in attachments.items():
        if not isinstance(att, dict) or not isinstance(att.get("data"), str):
            raise Invalid(f"attachment {name!r} has no inline data (export with attachments=true)")
        try:
            total += len(_decode(att["data"]))
        except Invalid as exc:
            raise Invalid(f"attachment {name!r} is not valid base64") from exc
    if total > max_attachment_bytes:
        raise Invalid(f"the attachments are larger than {max_attachment_bytes} bytes")


def _body_size(doc: dict[str, Any]) -> int:
    """The JSON size CouchDB's max_document_size sees: attachment data left out."""
    attachments = doc.get("_attachments")
    if isinstance(attachments, dict):
        doc = {
            **doc,
            "_attachments": {n: {k: v for k, v in a.items() if k != "data"} for n, a in attachments.items()},
        }
    try:
        return len(orjson.dumps(doc))
    except orjson.JSONEncodeError as exc:
        raise Invalid(TOO_DEEP) from exc


def prepare(
    index: int, item: Any, *, is_admin: bool, max_doc_bytes: int, max_attachment_bytes: int
) -> Prepared:
    """The doc to write for one input item, or Invalid. Every check runs before anything
    derived from the content (the generated `_id`), so bad content is `invalid`, never a
    server error."""
    doc = unwrap(item)
    if not isinstance(doc, dict):
        raise Invalid("not a JSON object")
    doc = {k: v for k, v in doc.items() if k not in REVISION_FIELDS}
    if doc.get("_deleted") is True:
        raise Invalid("deleted docs (tombstones) are not imported")
    odd = sorted(k for k in doc if k.startswith("_") and k not in SPECIAL_FIELDS)
    if odd:
        raise Invalid(f"field {odd[0]!r}: top-level fields starting with _ are reserved by CouchDB")
    if "_attachments" in doc:
        _check_attachments(doc["_attachments"], max_attachment_bytes)
    try:
        default_content_types(doc)
        validate_doc(doc)  # as CouchDB checks it: no doc of an import may fail the backend
    except DocInvalid as exc:
        raise Invalid(exc.reason) from None
    size = _body_size(doc)
    if size > max_doc_bytes:
        raise Invalid(f"the doc is {size} bytes, over the limit of {max_doc_bytes} (attachments not counted)")
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
    return Prepared(index, doc)


def same_content(imported: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Equal as JSON values, not as text: `38.0` and `38` are one number (the embedded
    backend stores the first as the second, CouchDB keeps it), so a re-import of the same
    data is `unchanged`, whatever the backend did to its numbers."""
    if stored is None:
        return False
    mine, theirs = canonical(imported), canonical(stored)
    return mine == theirs or _numbers_as_values(orjson.loads(mine)) == _numbers_as_values(
        orjson.loads(theirs)
    )


def _numbers_as_values(value: Any) -> Any:
    """`value` with each number as the IEEE double a JSON number stands for (RFC 8259 6),
    written as an int when it is integral: `38.0` -> 38, `-0.0` -> 0, and an integer past 2**53
    that a JavaScript backend rounded equals the one it was rounded from."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**63 else number
    if isinstance(value, dict):
        return {k: _numbers_as_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_values(v) for v in value]
    return value


def needs_attachment_data(imported: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Whether only the stored attachments' bytes can tell if `imported` is unchanged: both
    carry the same attachment names, and the stored ones are stubs whose digest may be of
    the gzipped bytes CouchDB keeps (so it differs from the digest of the same data)."""
    if stored is None:
        return False
    ours, theirs = imported.get("_attachments"), stored.get("_attachments")
    if not isinstance(ours, Mapping) or not isinstance(theirs, Mapping) or set(ours) != set(theirs):
        return False
    bare = same_content({**imported, "_attachments": {}}, {**stored, "_attachments": {}})
    return bare and not same_content(imported, stored)


def branch_rev(doc: Mapping[str, Any]) -> str:
    """A deterministic first revision for `keep_both`, so a retry adds no second branch.

    CouchDB shows the leaf with the highest (generation, rev string); the branch must never
    be that leaf. Its hash starts with eight zeros, so it sorts below any other first
    revision but about one in four billion; the importer moves a stored winner that is
    still a first revision and would sort below anyway to a second revision first."""
    return "1-00000000" + hashlib.md5(canonical(doc)).hexdigest()[:24]  # noqa: S324 - a CouchDB-style rev id


def branch_would_win(branch: str, winner_rev: object) -> bool:
    return generation(winner_rev) == 1 and isinstance(winner_rev, str) and branch >= winner_rev
