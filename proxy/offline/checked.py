"""Offline users' writes checked as CouchDB checks them (proxy/couch/validate.py) before they
are judged or forwarded: a doc CouchDB would refuse gets its own `_bulk_docs` row (the
others are still written), a malformed request or single-doc write is 400; every refused
doc is audited as `invalid`."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.audit.recorder import Recorder
from proxy.couch.validate import DocInvalid, bulk_request, default_content_types, validate_put
from proxy.errors import BadRequest


def _audit(audit: Recorder, db: str, doc: object, exc: DocInvalid) -> None:
    doc_id = doc.get("_id") if isinstance(doc, dict) else None
    audit.record("write", "invalid", db=db, doc_id=doc_id if isinstance(doc_id, str) else None,
                 reason=f"{exc.error}: {exc.reason}")  # fmt: skip


def split_bulk(audit: Recorder, db: str, body: Any) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """The docs of a `_bulk_docs` body and the rows of those CouchDB would refuse, by position;
    `body["docs"]` is left holding only the others. 400 for a malformed request."""
    try:
        docs, new_edits = bulk_request(body)
    except DocInvalid as exc:
        raise exc.as_error() from None
    refused: dict[int, dict[str, Any]] = {}
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise BadRequest("Document must be a JSON object")
        default_content_types(doc)
        try:
            validate_put(doc, query_rev=None, new_edits=new_edits)
        except DocInvalid as exc:
            refused[index] = exc.row(doc.get("_id"))
            _audit(audit, db, doc, exc)
    body["docs"] = [doc for index, doc in enumerate(docs) if index not in refused]
    return docs, refused


def with_refused(response: web.Response, docs: list[Any], refused: dict[int, dict[str, Any]]) -> web.Response:
    """The `_bulk_docs` answer for the docs that were forwarded, with the refused docs' rows
    put back in request order (a forwarded doc's row, if it has one, names its id)."""
    if not refused or response.status != 201 or not isinstance(response.body, bytes):
        return response
    rows = iter(orjson.loads(response.body))
    pending = next(rows, None)
    merged: list[Any] = []
    for index, doc in enumerate(docs):
        if index in refused:
            merged.append(refused[index])
        elif pending is not None and isinstance(pending, dict) and pending.get("id") == doc.get("_id"):
            merged.append(pending)
            pending = next(rows, None)
    merged += [row for row in ([pending] if pending is not None else []) + list(rows)]
    answer = web.Response(body=orjson.dumps(merged), status=201, content_type="application/json")
    return answer


def check_doc(audit: Recorder, request: web.Request, db: str, doc: dict[str, Any]) -> None:
    """A single-doc write (`PUT`, `POST /db`): 400 with CouchDB's error if CouchDB would refuse it."""
    default_content_types(doc)
    try:
        validate_put(
            doc, query_rev=request.query.get("rev"), new_edits=request.query.get("new_edits") != "false"
        )
    except DocInvalid as exc:
        _audit(audit, db, doc, exc)
        raise exc.as_error() from None
