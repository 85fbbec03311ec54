"""Audit entries for the writes couchgate forwards to CouchDB (online users, token callers
and admins). Offline users' writes are recorded where they are judged.

Kinds of forwarded write (`write_kind`) and their entries:

    doc, create      PUT/DELETE/COPY /db/id, POST /db     create | update | delete
    attachment       PUT/DELETE /db/id/name               attachment
    bulk             POST /db/_bulk_docs                   one per doc: create | update | delete | replicate
    db               PUT/DELETE /db                        db_create | db_delete
    security         PUT /db/_security                     security (the new object in details)
    purge            POST /db/_purge                       one purge per doc id
    index            POST /db/_index, DELETE /db/_index/.. index
    update_handler   PUT/POST /db/_design/x/_update/h[/id] update_handler

A write whose docs cannot be itemised (a body past the JSON limit, an answer couchgate
could not read) is never recorded as nothing: its entries say `unknown`. Its intent is
stored before it is forwarded (`proxy.audit.recorder`, crash-proof); outcomes are the
recorder's (`OUTCOMES`).
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from typing import Any

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit.recorder import Recorder, failed_outcome, outcome_of, row_outcome

WRITE_METHODS = {"PUT", "POST", "DELETE", "COPY"}
# Kinds whose JSON request body the audit log reads (bounded by COUCHGATE_MAX_JSON_BYTES).
JSON_BODY_KINDS = {"doc", "create", "bulk", "security", "purge", "index"}


def write_kind(method: str, path: CouchPath) -> str | None:
    """The kind of write (see the module docstring) the audit log records, or None."""
    if method not in WRITE_METHODS or path.is_server or path.db is None:
        return None
    if len(path.segments) == 1:
        return {"POST": "create", "PUT": "db", "DELETE": "db"}.get(method)
    second = path.segments[1]
    special = {
        ("POST", "_bulk_docs"): "bulk",
        ("PUT", "_security"): "security",
        ("POST", "_purge"): "purge",
        ("POST", "_index"): "index",
        ("DELETE", "_index"): "index",
    }
    if second.startswith("_") and not second.startswith(("_design/", "_local/")):
        return special.get((method, second))  # _find, _all_docs, _changes, ...: reads
    doc_id = path.doc_id
    if doc_id is None or doc_id.startswith("_local/"):
        return None
    if doc_id.startswith("_design/") and path.rest[:1] and path.rest[0].startswith("_"):
        # Design functions (attachment names cannot start with `_`): only `_update` writes.
        return "update_handler" if path.rest[0] == "_update" and method in ("PUT", "POST") else None
    return "attachment" if path.rest else "doc"


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _record_bulk(
    audit: Recorder, db: str | None, status: int, body: Any, answer: Any, body_read: bool
) -> None:
    docs = body.get("docs") if isinstance(body, dict) else None
    rows_answered = [row for row in answer if isinstance(row, dict)] if isinstance(answer, list) else None
    if not isinstance(docs, list):
        # The docs are not known: CouchDB's answer names what it can, and one entry for the
        # request says that the rest could not be itemised.
        for answered in rows_answered or []:
            outcome, rev_after, reason = row_outcome(answered)
            audit.record("bulk_docs", outcome, db=db, doc_id=_str(answered.get("id")),
                         rev_after=rev_after, reason=reason)  # fmt: skip
        why = "its body was larger than the JSON limit" if not body_read else "its body was not JSON"
        audit.record("bulk_docs", "unknown" if status < 300 else outcome_of(status), db=db,
                     reason=f"the docs of this _bulk_docs were not itemised: {why}",
                     details={"answered_rows": len(rows_answered or [])})  # fmt: skip
        return
    new_edits = body.get("new_edits", True) is not False
    rows: dict[str | None, deque[dict[str, Any]]] = defaultdict(deque)
    for answered in rows_answered or []:
        rows[_str(answered.get("id"))].append(answered)
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        doc_id = _str(doc.get("_id"))
        queue = rows.get(doc_id)
        row = queue.popleft() if queue else None
        rev = _str(doc.get("_rev"))
        if row is not None:
            outcome, rev_after, reason = row_outcome(row)
        elif status >= 300 or rows_answered is None:
            (outcome, reason), rev_after = failed_outcome(status, answer), None
        elif not new_edits:
            outcome, rev_after, reason = "written", rev, None  # CouchDB answers nothing for a success
        else:
            outcome, rev_after, reason = "unknown", None, "CouchDB's answer has no row for this doc"
        if doc.get("_deleted"):
            action = "delete"
        elif not new_edits:
            action = "replicate"
        else:
            action = "update" if rev else "create"
        audit.doc(
            action, outcome, db, doc, doc_id=_str((row or {}).get("id")) or doc_id,
            rev_before=rev if new_edits else None, rev_after=rev_after, reason=reason,
        )  # fmt: skip


def _record_purge(audit: Recorder, db: str | None, status: int, body: Any, answer: Any) -> None:
    purged = answer.get("purged") if isinstance(answer, dict) else None
    targets = body if isinstance(body, dict) and body else {None: None}
    for doc_id, revs in targets.items():
        done = purged.get(doc_id) if isinstance(purged, dict) and doc_id is not None else None
        audit.record("purge", outcome_of(status), db=db, doc_id=doc_id,
                     reason=_reason(status, answer), details={"revs": revs, "purged": done})  # fmt: skip


def _reason(status: int, answer: Any) -> str | None:
    return _str(answer.get("reason")) if status >= 300 and isinstance(answer, dict) else None


def _record_special(
    audit: Recorder, request: web.Request, path: CouchPath, kind: str, status: int, body: Any, answer: Any
) -> None:
    db, reason = path.db, _reason(status, answer)
    if kind == "db":
        action = "db_create" if request.method == "PUT" else "db_delete"
        audit.record(action, outcome_of(status), db=db, reason=reason)
    elif kind == "security":
        details = {"security": body} if isinstance(body, dict) else {}
        audit.record("security", outcome_of(status), db=db, reason=reason, details=details)
    elif kind == "purge":
        _record_purge(audit, db, status, body, answer)
    elif kind == "index":
        ok = isinstance(answer, dict) and status < 300
        if request.method == "POST":
            doc_id = _str(answer.get("id")) if ok else None
            name = _str(answer.get("name")) if ok else (body.get("name") if isinstance(body, dict) else None)
        else:  # DELETE /db/_index/{ddoc}/json/{name}
            rest = path.segments[2:]
            ddoc = rest[1] if rest[:1] == ("_design",) and len(rest) > 1 else (rest[0] if rest else None)
            doc_id = None if ddoc is None else ddoc if ddoc.startswith("_design/") else f"_design/{ddoc}"
            name = rest[-1] if len(rest) > 1 else None
        audit.record("index", outcome_of(status), db=db, doc_id=doc_id, reason=reason,
                     details={"name": name, "method": request.method})  # fmt: skip
    else:  # update_handler: /db/_design/x/_update/{handler}[/{doc id}]
        rest = path.rest
        audit.record("update_handler", outcome_of(status), db=db,
                     doc_id="/".join(rest[2:]) or None, reason=reason,
                     details={"handler": f"{path.doc_id}/{rest[1] if len(rest) > 1 else ''}"})  # fmt: skip


def record_write(
    audit: Recorder,
    request: web.Request,
    path: CouchPath,
    kind: str,
    status: int,
    request_body: bytes | None,
    response_body: bytes,
    *,
    body_read: bool = True,
) -> None:
    """Entries for one forwarded write, from its request and CouchDB's answer. `body_read`
    is False when the request body streamed through unread (past the JSON limit)."""
    answer = _json(response_body)
    db = path.db
    if kind == "bulk":
        _record_bulk(audit, db, status, _json(request_body or b""), answer, body_read)
        return
    if kind not in ("doc", "create", "attachment"):
        _record_special(audit, request, path, kind, status, _json(request_body or b""), answer)
        return
    rev_before = request.query.get("rev") or request.headers.get("If-Match")
    body = None
    if kind in ("doc", "create") and request.method in ("PUT", "POST"):
        body = _json(request_body or b"")
        if isinstance(body, dict):
            rev_before = rev_before or _str(body.get("_rev"))
    if kind == "attachment":
        action = "attachment"
    elif request.method == "DELETE":
        action = "delete"
    else:
        action = "update" if rev_before else "create"
    answered_id = answer.get("id") if isinstance(answer, dict) and status < 300 else None
    audit.answered(
        action, status, answer, db, body if isinstance(body, dict) else {},
        doc_id=_str(answered_id) or path.doc_id, rev_before=rev_before,
    )  # fmt: skip


def name_new_docs(docs: list[Any]) -> bool:
    """Give each new doc without `_id` one (as CouchDB would: a random UUID), so its intent
    can name it; True if any was named."""
    named = False
    for doc in docs:
        if isinstance(doc, dict) and "_id" not in doc:
            doc["_id"] = uuid.uuid4().hex
            named = True
    return named
