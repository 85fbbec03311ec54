"""proxy/couch/validate.py against what Apache CouchDB 3.4.3 answered for the same bodies
(recorded by hand from a real node: the error and reason it gives, or 'accepted')."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.couch.validate import DocInvalid, validate_bulk, validate_doc, validate_put

R = "1-" + "a" * 32
# body -> CouchDB 3.4.3's (error, reason) for a `_bulk_docs` holding it
COUCHDB_REFUSES: list[tuple[dict[str, Any], bool, str, str]] = [
    ({"_id": "a", "_bogus": 1}, True, "doc_validation", "Bad special document member: _bogus"),
    ({"_id": "b", "_attachments": "x"}, True, "doc_validation", "Bad special document member: _attachments"),
    ({"_id": "d", "_attachments": {"f": {"content_type": "text/plain", "data": "!!!"}}}, True, "bad_request",
     "Invalid attachment data for f"),
    ({"_id": "e", "_attachments": {"f": {"content_type": "text/plain"}}}, True, "bad_request",
     "Invalid attachment data for f"),
    ({"_id": "h", "_attachments": {"f": {"data": "YQ"}}}, True, "bad_request", "Invalid attachment data for f"),
    ({"_id": "o", "_deleted": "yes"}, True, "doc_validation", "Bad special document member: _deleted"),
    ({"_id": 5}, True, "illegal_docid", "Document id must be a string"),
    ({"_id": ""}, True, "illegal_docid", "Document id must not be empty"),
    ({"_id": "_foo"}, True, "illegal_docid", "Only reserved document ids may start with underscore."),
    ({"_id": "_design/"}, True, "illegal_docid", "Illegal document id `_design/`"),
    ({"_id": "p", "_rev": "bogus"}, True, "bad_request", "Invalid rev format"),
    ({"_id": "q", "_rev": 5}, True, "bad_request", "Invalid rev format"),
    ({"_id": "c3", "_rev": "1-" + "z" * 32}, False, "bad_request", "Invalid rev format"),
    ({"_id": "r", "_revisions": {}}, True, "doc_validation", "_revisions.start isn't an integer."),
    ({"_id": "s", "_revisions": "x"}, True, "doc_validation", "Bad special document member: _revisions"),
    ({"_id": "a", "_rev": R, "_revisions": {"start": 1, "ids": "x"}}, False, "doc_validation",
     "_revisions.ids isn't a array."),
    ({"_id": "a", "_rev": R, "_revisions": {"start": 1, "ids": [5]}}, False, "doc_validation", "RevId isn't a string"),
    ({"_id": "b"}, False, "bad_request",
     "When `new_edits: false`, the document needs `_rev` or `_revisions` specified"),
]  # fmt: skip
COUCHDB_ACCEPTS: list[dict[str, Any]] = [
    {"_id": "t", "_conflicts": ["1-a"]},
    {"_id": "u", "_local_seq": 1},
    {"_id": "v", "_revs_info": 1},
    {"_id": "x", "_replication_state": "x"},
    {"_id": "n", "_attachments": {"f": {"data": "YQ=="}}},
    {"_id": "_design/x"},
    {"_id": "_local/x"},
    {"_id": "k", "_deleted": True, "_rev": R},
]
# CouchDB answers 500 (function_clause, badarg) or the embedded backend fails: refused first.
COUCHDB_FAILS: list[dict[str, Any]] = [
    {"_id": "g", "_attachments": {"f": {"content_type": 5, "data": "YQ=="}}},
    {"_id": "l", "_attachments": {"f": {"follows": True, "length": 3}}},
    {"_id": "m", "_attachments": {"f": {"stub": True, "encoding": "zzz", "length": 1}}},
    {"_id": "z", "_attachments": {"f": {"stub": True, "digest": "md5-!!!", "length": 1}}},
    {"_id": "c", "_attachments": {"f": "x"}},
]


@pytest.mark.parametrize(("doc", "new_edits", "error", "reason"), COUCHDB_REFUSES)
def test_what_couchdb_refuses_is_refused_in_its_words(doc: dict[str, Any], new_edits: bool, error: str,
                                                       reason: str) -> None:  # fmt: skip
    with pytest.raises(DocInvalid) as refused:
        validate_doc(doc, new_edits=new_edits)
    assert (refused.value.error, refused.value.reason) == (error, reason)


@pytest.mark.parametrize("doc", COUCHDB_ACCEPTS)
def test_what_couchdb_accepts_is_accepted(doc: dict[str, Any]) -> None:
    validate_doc(doc)


@pytest.mark.parametrize("doc", COUCHDB_FAILS)
def test_what_fails_a_backend_is_refused_as_a_bad_request(doc: dict[str, Any]) -> None:
    with pytest.raises(DocInvalid) as refused:
        validate_doc(doc)
    assert refused.value.error == "bad_request"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([1], "Request body must be a JSON object"),
        ({}, "POST body must include `docs` parameter."),
        ({"docs": {}}, "`docs` parameter must be an array."),
        ({"docs": [5]}, "Document must be a JSON object"),
        ({"docs": [{"_id": "zz"}], "new_edits": "no"}, "`new_edits` must be true or false"),  # CouchDB: 500
    ],
)
def test_malformed_bulk_requests(body: Any, reason: str) -> None:
    with pytest.raises(DocInvalid) as refused:
        validate_bulk(body)
    assert refused.value.reason == reason


def test_a_rev_in_the_query_must_agree_with_the_body() -> None:
    with pytest.raises(DocInvalid, match="different values"):
        validate_put({"_rev": "2-def"}, query_rev="1-abc")
    validate_put({"_rev": "1-abc"}, query_rev="1-abc")
