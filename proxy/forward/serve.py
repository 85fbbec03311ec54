"""A request forwarded to CouchDB for a caller couchgate lets through (online users, token
callers, admins; `proxy.dispatch` decides who): the caller's credentials or couchgate's
(`acting`), the guard's screening (`guard`), then the relay (`relay`). A write is recorded
in the audit log with CouchDB's answer, its intent stored before it is sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.audit.recorder import Planned, Recorder, planned
from proxy.auth.principal import Principal
from proxy.couch.validate import DocInvalid, validate_bulk, validate_put
from proxy.errors import Forbidden, PayloadTooLarge
from proxy.forward import guard
from proxy.forward.acting import credentials_for
from proxy.forward.limits import CHUNK, in_slices, rest_of_body
from proxy.forward.relay import CAPTURE_LIMIT, forward
from proxy.keys import SETTINGS
from proxy.params import collect


async def serve_forwarded(
    request: web.Request, path: CouchPath, principal: Principal, kind: str | None
) -> web.StreamResponse:
    """Forward the request; `kind`: the kind of write it is (`capture.write_kind`), if any."""
    upstream = await credentials_for(request, principal, path)
    credentials = upstream.credentials
    # Requests that would harm the backend, or that a backend could misread (proxy.forward.guard).
    screened = await guard.screen(request, path, principal, credentials)
    if screened.answer is not None:
        return screened.answer
    request = screened.request
    if kind is None:
        return await forward(request, path, credentials, body=screened.body, check=upstream.check)
    # A write: recorded in the audit log with CouchDB's answer. JSON bodies up to the JSON
    # limit are read, chunked ones too, so each doc of a `_bulk_docs` gets its entry; larger
    # ones (an admin's: from others they are refused below) and attachments stream through,
    # and their entries say what could not be known.
    settings = request.app[SETTINGS]
    body: bytes | AsyncIterable[bytes] | None = None
    captured: bytes | None = None
    body_read = True
    json_body = kind in capture.JSON_BODY_KINDS and request.content_type != "multipart/related"
    if json_body and request.body_exists:
        declared = request.content_length
        if declared is None or declared <= settings.max_json_bytes:
            prefix, complete = await collect(request.content.iter_chunked(CHUNK), settings.max_json_bytes)
            if complete:
                captured = prefix
                body = prefix if len(prefix) <= CAPTURE_LIMIT else in_slices(prefix)
            else:
                body, body_read = rest_of_body(request, prefix, settings.max_body_bytes), False
        else:
            body_read = False

    if not principal.is_admin and kind in NAMING_KINDS and request.body_exists and captured is None:
        # The docs a body names are judged against couchgate's own `_local` docs (in
        # `check_body`): a body that could not be read whole is not judged, nor forwarded.
        raise PayloadTooLarge(f"request body is larger than {settings.max_json_bytes} bytes")
    audit = Recorder.of(request)
    if captured is not None and kind in CHECKED_KINDS and request.method in ("PUT", "POST"):
        named = check_body(audit, request, path, kind, captured, own_local=principal.is_admin)
        if named is not None:  # new docs given their ids, so that the intent can name them
            captured = named
            body = named if len(named) <= CAPTURE_LIMIT else in_slices(named)
            length = "content-length"  # the client's is not the new body's, counted when sent
            request = request.clone(
                headers=[(k, v) for k, v in request.headers.items() if k.lower() != length]
            )
    await audit.intend(path.db, planned_writes(request, path, kind, captured), kind)

    def answered(status: int, raw: bytes) -> None:
        capture.record_write(audit, request, path, kind, status, captured, raw, body_read=body_read)

    # A `_bulk_docs` answer has a row per doc: read as much of it as a JSON body may hold.
    limit = settings.max_json_bytes if kind == "bulk" else CAPTURE_LIMIT
    return await forward(
        request, path, credentials, body=body, check=upstream.check, on_answer=answered, capture_limit=limit
    )


# Writes whose JSON body CouchDB parses as docs: checked first (proxy/couch/validate.py).
CHECKED_KINDS = {"bulk", "doc", "create"}
# ... and those whose body names the docs' ids (a PUT's id is its path's).
NAMING_KINDS = {"bulk", "create"}


def check_body(
    audit: Recorder, request: web.Request, path: CouchPath, kind: str, raw: bytes, *, own_local: bool
) -> bytes | None:
    """400 with CouchDB's error for a body CouchDB would refuse or fail on, before it is
    forwarded: as CouchDB does, the first problem refuses the whole request; 403 for one
    that names couchgate's own `_local` docs, unless `own_local` (a server admin's). A body
    that is not JSON at all is left to CouchDB, which says so itself. Returns the body again
    when new docs in it were given ids (see `capture.name_new_docs`)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not own_local and kind in NAMING_KINDS and guard.names_own_local(body):
        raise Forbidden(guard.OWN_REASON)
    try:
        if kind == "bulk":
            validate_bulk(body)
        else:
            validate_put(body, query_rev=request.query.get("rev"),
                         new_edits=request.query.get("new_edits") != "false")  # fmt: skip
    except DocInvalid as exc:
        answer = orjson.dumps({"error": exc.error, "reason": exc.reason})
        capture.record_write(audit, request, path, kind, 400, raw, answer)  # refused as CouchDB would
        raise exc.as_error() from None
    durable = request.app[SETTINGS].audit_enabled and request.app[SETTINGS].audit_durable
    if kind == "bulk" and body.get("new_edits", True) and durable and capture.name_new_docs(body["docs"]):
        return orjson.dumps(body)
    if kind == "create" and durable and capture.name_new_docs([body]):
        return orjson.dumps(body)
    return None


def planned_writes(request: web.Request, path: CouchPath, kind: str, captured: bytes | None) -> list[Planned]:
    """What a forwarded write may leave in CouchDB, for its intent (see proxy/audit/recorder.py)."""
    rev = request.query.get("rev") or request.headers.get("If-Match")
    body = None
    if captured is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(captured)
    if kind == "bulk":
        if not isinstance(body, dict) or not isinstance(body.get("docs"), list):
            return []  # not itemised (past the JSON limit): the entries after it will say so
        return [planned(d, body.get("new_edits", True) is not False) for d in body["docs"]]
    if kind == "purge":
        return [[doc_id, None, None] for doc_id in body] if isinstance(body, dict) else []
    if kind in ("doc", "create", "attachment") and request.method != "COPY":
        new_edits = request.query.get("new_edits") != "false"
        doc = dict(body) if isinstance(body, dict) and kind != "attachment" else {}
        if path.doc_id is not None:
            doc["_id"] = path.doc_id
        return [planned(doc, new_edits, rev=rev or doc.get("_rev"))]
    if request.method == "COPY":
        target = request.headers.get("Destination", "").split("?", 1)[0]
        return [[target or None, None, None]]
    if kind == "update_handler" and len(path.rest) > 2:
        return [["/".join(path.rest[2:]), None, None]]
    return []
