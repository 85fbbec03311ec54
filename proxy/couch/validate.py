"""CouchDB's checks of a document body, made before anything is forwarded (pure, no I/O).

CouchDB 3 parses every doc of a write with `couch_doc:from_json_obj_validate` and refuses
what it cannot parse; a few shapes it does not expect make it answer 500
(`function_clause`, `badarg`), and the embedded pouchdb-server answers 500 (or dies) for
most of them. couchgate refuses them all first, with CouchDB's own error and reason where
CouchDB has one, so no client body ever comes back as a server error.

As CouchDB (3.4.3, checked against it):
- a doc is a JSON object (`bad_request` "Document must be a JSON object");
- `_id` is a non-empty string; only `_design/...` and `_local/...` may start with `_`
  (`illegal_docid`);
- `_rev` is `N-revid` (`bad_request` "Invalid rev format"; a 32-character revid is hex);
- `_revisions` is `{"start": int, "ids": [str, ...]}` (`doc_validation`);
- `_deleted` is a boolean and `_attachments` an object (`doc_validation` "Bad special
  document member");
- other members starting with `_` are refused (`doc_validation` "Bad special document
  member: _x"), except those CouchDB documents: `_conflicts`, `_deleted_conflicts`,
  `_local_seq`, `_revs_info` (ignored by CouchDB) and the `_replication_*` fields of
  replication docs;
- an inline attachment's `data` is base64 (`bad_request` "Invalid attachment data for
  NAME"); with `new_edits: false` a doc needs `_rev` or `_revisions` (`bad_request`).

Stricter than CouchDB, where CouchDB answers 500, drops data silently or the embedded
backend fails: an attachment that is not an object, a `content_type` that is not a
string, `follows` in a JSON body, a stub whose `encoding`, `digest`, `length` or `revpos`
has the wrong shape, base64 with whitespace, `_revisions` whose `ids` are empty or longer
than `start`, a `_rev` that disagrees with `_revisions`, a replicated doc without `_id`,
and `_access` (reserved by CouchDB for a feature it does not document).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest

ALLOWED_SPECIAL = {
    "_id", "_rev", "_revisions", "_attachments", "_deleted",
    "_conflicts", "_deleted_conflicts", "_local_seq", "_revs_info",
    "_replication_id", "_replication_state", "_replication_state_time",
    "_replication_state_reason", "_replication_stats",
}  # fmt: skip
REV = re.compile(r"^([0-9]+)-(.+)$", re.DOTALL)
HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
ENCODINGS = {"gzip", "identity"}


class DocInvalid(ValueError):
    """A body CouchDB would refuse; `error` and `reason` as CouchDB words them."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason

    def as_error(self) -> BadRequest:
        """CouchDB's 400 for this body, with its own error code."""
        error = BadRequest(self.reason)
        error.error = self.error
        return error

    def row(self, doc_id: object) -> dict[str, Any]:
        """The doc's row in a `_bulk_docs` answer."""
        return {"id": doc_id if isinstance(doc_id, str) else None, "error": self.error, "reason": self.reason}


def _bad(reason: str) -> DocInvalid:
    return DocInvalid("bad_request", reason)


def _member(name: str) -> DocInvalid:
    return DocInvalid("doc_validation", f"Bad special document member: {name}")


def validate_doc_id(doc_id: object) -> None:
    if not isinstance(doc_id, str):
        raise DocInvalid("illegal_docid", "Document id must be a string")
    if doc_id == "":
        raise DocInvalid("illegal_docid", "Document id must not be empty")
    if doc_id in ("_design/", "_local/"):
        raise DocInvalid("illegal_docid", f"Illegal document id `{doc_id}`")
    if doc_id.startswith("_") and not doc_id.startswith(("_design/", "_local/")):
        raise DocInvalid("illegal_docid", "Only reserved document ids may start with underscore.")


def valid_rev(rev: object) -> bool:
    """Whether CouchDB takes `rev` as a revision (`parse_rev` does not refuse it)."""
    try:
        parse_rev(rev)
    except DocInvalid:
        return False
    return True


def parse_rev(rev: object) -> tuple[int, str]:
    """(generation, revid) of a `_rev`, or `bad_request` "Invalid rev format"."""
    match = REV.match(rev) if isinstance(rev, str) else None
    if match is None or (len(match.group(2)) == 32 and not HEX32.match(match.group(2))):
        raise _bad("Invalid rev format")
    return int(match.group(1)), match.group(2)


def _revisions(value: object, rev: object) -> None:
    if not isinstance(value, dict):
        raise _member("_revisions")
    start, ids = value.get("start"), value.get("ids")
    if not isinstance(start, int) or isinstance(start, bool):
        raise DocInvalid("doc_validation", "_revisions.start isn't an integer.")
    if not isinstance(ids, list):
        raise DocInvalid("doc_validation", "_revisions.ids isn't a array.")
    for revid in ids:
        if not isinstance(revid, str):
            raise DocInvalid("doc_validation", "RevId isn't a string")
        if len(revid) == 32 and not HEX32.match(revid):
            raise DocInvalid("doc_validation", "RevId isn't a valid hexadecimal")
    if not ids or start < len(ids):
        raise DocInvalid("doc_validation", "_revisions.ids must name 1 to _revisions.start revisions")
    if rev is not None and rev != f"{start}-{ids[0]}":
        raise DocInvalid("doc_validation", "_rev is not the newest revision of _revisions")


def _is_base64(data: str) -> bool:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# A content type a response header can carry back: printable, bounded.
MEDIA_TYPE = re.compile(r"^[\x20-\x7e]+$")
MAX_MEDIA_TYPE = 255


def _media_type(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_MEDIA_TYPE and MEDIA_TYPE.match(value) is not None


def default_content_types(doc: object) -> None:
    """Give inline attachments without a `content_type` CouchDB's own default, so what is
    forwarded is what CouchDB would store (couchgate rebuilds the bodies it forwards);
    pouchdb-server would store none and then fail every read of the attachment."""
    attachments = doc.get("_attachments") if isinstance(doc, dict) else None
    if isinstance(attachments, dict):
        for att in attachments.values():
            if isinstance(att, dict) and att.get("stub") is not True and "content_type" not in att:
                att["content_type"] = "application/octet-stream"


def _attachments(value: object) -> None:
    if not isinstance(value, dict):
        raise _member("_attachments")
    for name, att in value.items():
        if not isinstance(att, dict):
            raise _bad(f"Invalid attachment data for {name}")
        if "content_type" in att and not _media_type(att["content_type"]):
            # What a header cannot carry: pouchdb-server stores it and then fails every read
            # of the attachment (a PouchDB pull of the doc stops there, for every reader).
            raise _bad(f"Attachment {name}: content_type must be a media type such as text/plain")
        for field in ("length", "encoded_length", "revpos"):
            number = att.get(field)
            if field in att and (not isinstance(number, int) or isinstance(number, bool) or number < 0):
                raise _bad(f"Attachment {name}: {field} must be a non-negative integer")
        if att.get("follows") is True:
            raise _bad(f"Attachment {name} says its data follows, which a JSON body cannot carry")
        if att.get("stub") is True:
            digest = att.get("digest")
            if "digest" in att and not (
                isinstance(digest, str) and digest.startswith("md5-") and _is_base64(digest[4:])
            ):
                raise _bad(f"Invalid attachment stub digest for {name}")
            if "encoding" in att and att["encoding"] not in ENCODINGS:
                raise _bad(f"Attachment {name}: encoding must be gzip or identity")
            continue
        data = att.get("data")
        if not isinstance(data, str) or not _is_base64(data):
            raise _bad(f"Invalid attachment data for {name}")


def validate_doc(doc: object, *, new_edits: bool = True) -> None:
    """Raise DocInvalid for a doc CouchDB would refuse (or fail on); see the module docstring."""
    if not isinstance(doc, dict):
        raise _bad("Document must be a JSON object")
    for name in doc:
        if name.startswith("_") and name not in ALLOWED_SPECIAL:
            raise _member(name)
    if "_id" in doc:
        validate_doc_id(doc["_id"])
    if "_rev" in doc:
        parse_rev(doc["_rev"])
    if "_deleted" in doc and not isinstance(doc["_deleted"], bool):
        raise _member("_deleted")
    if "_revisions" in doc:
        _revisions(doc["_revisions"], doc.get("_rev"))
    if "_attachments" in doc:
        _attachments(doc["_attachments"])
    if not new_edits:
        if "_rev" not in doc and "_revisions" not in doc:
            raise _bad("When `new_edits: false`, the document needs `_rev` or `_revisions` specified")
        if "_id" not in doc:
            raise _bad("When `new_edits: false`, the document needs `_id` specified")


def bulk_request(body: object) -> tuple[list[Any], bool]:
    """The docs and `new_edits` of a `_bulk_docs` body, or DocInvalid (`bad_request`) for a
    request CouchDB refuses as a whole (or fails on). The docs are not checked here."""
    if not isinstance(body, Mapping):
        raise _bad("Request body must be a JSON object")
    if "docs" not in body:
        raise _bad("POST body must include `docs` parameter.")
    docs = body["docs"]
    if not isinstance(docs, list):
        raise _bad("`docs` parameter must be an array.")
    new_edits = body.get("new_edits", True)
    if not isinstance(new_edits, bool):
        raise _bad("`new_edits` must be true or false")
    return docs, new_edits


def validate_bulk(body: object) -> None:
    """A whole `_bulk_docs` body as CouchDB checks it: the first problem refuses the request."""
    docs, new_edits = bulk_request(body)
    for doc in docs:
        validate_doc(doc, new_edits=new_edits)


def validate_put(doc: object, *, query_rev: str | None, new_edits: bool = True) -> None:
    """`PUT /db/id` (and `POST /db`): the body, and a `?rev=` that must agree with `_rev`."""
    validate_doc(doc, new_edits=new_edits)
    assert isinstance(doc, dict)
    if query_rev is not None:
        parse_rev(query_rev)
        if "_rev" in doc and doc["_rev"] != query_rev:
            raise _bad("Document rev from request body and query string have different values")
