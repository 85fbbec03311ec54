"""Audit entries for what passes through couchgate to CouchDB (online users and admins),
and for security events. Offline users' writes are recorded where they are judged."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import orjson
from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit.api import AuditEntry, Outcome
from proxy.keys import AUDIT, PRINCIPAL
from proxy.logs import REQUEST_ID_KEY

WRITE_METHODS = {"PUT", "POST", "DELETE", "COPY"}


def entry(request: web.Request, action: str, outcome: Outcome, **fields: Any) -> AuditEntry:
    """An entry with who, from where and through which request filled in."""
    principal = request.get(PRINCIPAL)
    return AuditEntry(
        action=action,
        outcome=outcome,
        user=fields.pop("user", principal.name if principal else None),
        roles=principal.roles if principal else (),
        request_id=request.get(REQUEST_ID_KEY),
        client=request.remote,
        user_agent=request.headers.get("User-Agent"),
        path=request.rel_url.raw_path,
        **fields,
    )


def record(request: web.Request, action: str, outcome: Outcome, **fields: Any) -> None:
    request.app[AUDIT].record(entry(request, action, outcome, **fields))


def write_kind(method: str, path: CouchPath) -> str | None:
    """`doc`, `attachment`, `bulk` or `create` for the writes the audit log records."""
    if method not in WRITE_METHODS or path.is_server or path.db is None:
        return None
    if len(path.segments) == 1:
        return "create" if method == "POST" else None
    if path.segments[1] == "_bulk_docs" and method == "POST":
        return "bulk"
    doc_id = path.doc_id
    if doc_id is None or doc_id.startswith("_local/"):
        return None
    return "attachment" if path.rest else "doc"


def _outcome(status: int) -> Outcome:
    if status < 300:
        return "written"
    return {401: "forbidden", 403: "forbidden", 409: "conflict"}.get(status, "invalid")  # type: ignore[return-value]


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


ERROR_OUTCOMES: dict[str, Outcome] = {
    "conflict": "conflict",
    "forbidden": "forbidden",
    "unauthorized": "forbidden",
}


def _record_bulk(request: web.Request, db: str | None, status: int, body: Any, answer: Any) -> None:
    docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(docs, list):
        # The request streamed through unread: one entry per row CouchDB answered.
        for row in answer if isinstance(answer, list) else []:
            if isinstance(row, dict):
                outcome = ERROR_OUTCOMES.get(row["error"], "invalid") if "error" in row else "written"
                record(request, "bulk_docs", outcome, db=db, doc_id=row.get("id"), rev_after=row.get("rev"),
                       reason=row.get("reason"))  # fmt: skip
        return
    new_edits = body.get("new_edits", True) is not False
    rows: dict[str | None, deque[dict[str, Any]]] = defaultdict(deque)
    for row in answer if isinstance(answer, list) else []:
        if isinstance(row, dict):
            rows[row.get("id") if isinstance(row.get("id"), str) else None].append(row)
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        doc_id = doc.get("_id") if isinstance(doc.get("_id"), str) else None
        queue = rows.get(doc_id)
        row = queue.popleft() if queue else None
        rev = doc.get("_rev") if isinstance(doc.get("_rev"), str) else None
        if row is not None and "error" in row:
            outcome, rev_after, reason = (
                ERROR_OUTCOMES.get(row["error"], "invalid"),
                None,
                str(row.get("reason")),
            )
        elif row is not None:
            outcome, rev_after, reason = "written", row.get("rev"), None
        elif not new_edits and status < 300:
            outcome, rev_after, reason = "written", rev, None  # CouchDB answers nothing for a success
        else:
            outcome, rev_after, reason = _outcome(status), None, None
        if doc.get("_deleted"):
            action = "delete"
        elif not new_edits:
            action = "replicate"
        else:
            action = "update" if rev else "create"
        doc_type = doc.get("type") if isinstance(doc.get("type"), str) else None
        record(
            request, action, outcome, db=db, doc_id=(row or {}).get("id", doc_id), doc_type=doc_type,
            rev_before=rev if new_edits else None, rev_after=rev_after, reason=reason,
        )  # fmt: skip


def record_write(request: web.Request, path: CouchPath, kind: str, status: int, request_body: bytes | None,
                 response_body: bytes) -> None:  # fmt: skip
    """Entries for one forwarded write, from its request and CouchDB's answer."""
    answer = _json(response_body)
    db = path.db
    if kind == "bulk":
        _record_bulk(request, db, status, _json(request_body or b""), answer)
        return
    rev_before = request.query.get("rev") or request.headers.get("If-Match")
    doc_type = None
    if kind in ("doc", "create") and request.method in ("PUT", "POST"):
        body = _json(request_body or b"")
        if isinstance(body, dict):
            rev_before = rev_before or (body.get("_rev") if isinstance(body.get("_rev"), str) else None)
            doc_type = body.get("type") if isinstance(body.get("type"), str) else None
    if kind == "attachment":
        action = "attachment"
    elif request.method == "DELETE":
        action = "delete"
    else:
        action = "update" if rev_before else "create"
    ok = isinstance(answer, dict) and status < 300
    record(request, action, _outcome(status), db=db,
           doc_id=(answer.get("id") if ok else None) or path.doc_id, rev_before=rev_before,
           rev_after=answer.get("rev") if ok else None, doc_type=doc_type,
           reason=answer.get("reason") if isinstance(answer, dict) and not ok else None)  # fmt: skip
