"""Audit entries for what passes through couchgate to CouchDB (online users and admins),
and for security events. Offline users' writes are recorded where they are judged.

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
could not read) is never recorded as nothing: its entries say `unknown`.

Crash-proof (COUCHGATE_AUDIT_DURABLE, on by default): before a write is forwarded, an
intent (`action: intent`, `outcome: unknown`, `details.writes`: `[doc id, rev, generation]`
of each doc it may write) is stored in the writer's chain of intents (`intend`); the entry
recorded after CouchDB's answer says what happened. If couchgate dies in between, the
intent is the write's entry, and `couchgate audit verify` counts the write as accounted for.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy import observe
from proxy.access.paths import CouchPath
from proxy.audit.api import AuditEntry, Outcome, clean_text
from proxy.audit.log import AuditLog
from proxy.clients import client_address
from proxy.keys import AUDIT, CALLER
from proxy.logs import REQUEST_ID_KEY

WRITE_METHODS = {"PUT", "POST", "DELETE", "COPY"}
# Kinds whose JSON request body the audit log reads (bounded by COUCHGATE_MAX_JSON_BYTES).
JSON_BODY_KINDS = {"doc", "create", "bulk", "security", "purge", "index"}


def entry(request: web.Request, action: str, outcome: Outcome, **fields: Any) -> AuditEntry:
    """An entry with who, from where and through which request filled in."""
    principal = caller.principal if (caller := request.get(CALLER)) is not None else None
    user_agent = request.headers.get("User-Agent")
    return AuditEntry(
        action=action,
        outcome=outcome,
        user=fields.pop("user", principal.name if principal else None),
        roles=principal.roles if principal else (),
        request_id=request.get(REQUEST_ID_KEY),
        client=client_address(request),
        user_agent=clean_text(user_agent) if user_agent is not None else None,
        path=clean_text(request.rel_url.raw_path),
        **fields,
    )


def record(request: web.Request, action: str, outcome: Outcome, **fields: Any) -> None:
    request.app[AUDIT].record(entry(request, action, outcome, **fields))
    observe.audited(action, outcome)  # metrics: refusals and failed logins are counted from here


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


def outcome_of(status: int) -> Outcome:
    """The audit outcome of a write CouchDB answered with `status`."""
    if status < 300:
        return "written"
    return {401: "forbidden", 403: "forbidden", 409: "conflict"}.get(status, "invalid")  # type: ignore[return-value]


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


ERROR_OUTCOMES: dict[str, Outcome] = {
    "conflict": "conflict",
    "forbidden": "forbidden",
    "unauthorized": "forbidden",
}
UNREADABLE_ANSWER = "CouchDB's answer could not be read: the outcome of this doc is not known"


def _row_outcome(row: dict[str, Any]) -> tuple[Outcome, str | None, str | None]:
    """(outcome, rev written, reason) of one `_bulk_docs` answer row."""
    if "error" in row:
        return ERROR_OUTCOMES.get(str(row["error"]), "invalid"), None, str(row.get("reason"))
    return "written", _str(row.get("rev")), None


def _record_bulk(
    request: web.Request, db: str | None, status: int, body: Any, answer: Any, body_read: bool
) -> None:
    docs = body.get("docs") if isinstance(body, dict) else None
    rows_answered = [row for row in answer if isinstance(row, dict)] if isinstance(answer, list) else None
    if not isinstance(docs, list):
        # The docs are not known: CouchDB's answer names what it can, and one entry for the
        # request says that the rest could not be itemised.
        for answered in rows_answered or []:
            row_outcome, row_rev, row_reason = _row_outcome(answered)
            record(request, "bulk_docs", row_outcome, db=db, doc_id=_str(answered.get("id")),
                   rev_after=row_rev, reason=row_reason)  # fmt: skip
        why = "its body was larger than the JSON limit" if not body_read else "its body was not JSON"
        record(request, "bulk_docs", "unknown" if status < 300 else outcome_of(status), db=db,
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
            outcome, rev_after, reason = _row_outcome(row)
        elif status >= 300:
            outcome, rev_after, reason = outcome_of(status), None, None
        elif rows_answered is None:
            outcome, rev_after, reason = "unknown", None, UNREADABLE_ANSWER
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
        record(
            request, action, outcome, db=db, doc_id=_str((row or {}).get("id")) or doc_id,
            doc_type=_str(doc.get("type")), rev_before=rev if new_edits else None, rev_after=rev_after,
            reason=reason,
        )  # fmt: skip


def _record_purge(request: web.Request, db: str | None, status: int, body: Any, answer: Any) -> None:
    purged = answer.get("purged") if isinstance(answer, dict) else None
    targets = body if isinstance(body, dict) and body else {None: None}
    for doc_id, revs in targets.items():
        done = purged.get(doc_id) if isinstance(purged, dict) and doc_id is not None else None
        record(request, "purge", outcome_of(status), db=db, doc_id=doc_id,
               reason=_reason(status, answer), details={"revs": revs, "purged": done})  # fmt: skip


def _reason(status: int, answer: Any) -> str | None:
    return _str(answer.get("reason")) if status >= 300 and isinstance(answer, dict) else None


def _record_special(
    request: web.Request, path: CouchPath, kind: str, status: int, body: Any, answer: Any
) -> None:
    db, reason = path.db, _reason(status, answer)
    if kind == "db":
        action = "db_create" if request.method == "PUT" else "db_delete"
        record(request, action, outcome_of(status), db=db, reason=reason)
    elif kind == "security":
        details = {"security": body} if isinstance(body, dict) else {}
        record(request, "security", outcome_of(status), db=db, reason=reason, details=details)
    elif kind == "purge":
        _record_purge(request, db, status, body, answer)
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
        record(request, "index", outcome_of(status), db=db, doc_id=doc_id, reason=reason,
               details={"name": name, "method": request.method})  # fmt: skip
    else:  # update_handler: /db/_design/x/_update/{handler}[/{doc id}]
        rest = path.rest
        record(request, "update_handler", outcome_of(status), db=db,
               doc_id="/".join(rest[2:]) or None, reason=reason,
               details={"handler": f"{path.doc_id}/{rest[1] if len(rest) > 1 else ''}"})  # fmt: skip


def record_write(request: web.Request, path: CouchPath, kind: str, status: int, request_body: bytes | None,
                 response_body: bytes, *, body_read: bool = True) -> None:  # fmt: skip
    """Entries for one forwarded write, from its request and CouchDB's answer. `body_read`
    is False when the request body streamed through unread (past the JSON limit)."""
    answer = _json(response_body)
    db = path.db
    if kind == "bulk":
        _record_bulk(request, db, status, _json(request_body or b""), answer, body_read)
        return
    if kind not in ("doc", "create", "attachment"):
        _record_special(request, path, kind, status, _json(request_body or b""), answer)
        return
    rev_before = request.query.get("rev") or request.headers.get("If-Match")
    doc_type = None
    if kind in ("doc", "create") and request.method in ("PUT", "POST"):
        body = _json(request_body or b"")
        if isinstance(body, dict):
            rev_before = rev_before or _str(body.get("_rev"))
            doc_type = _str(body.get("type"))
    if kind == "attachment":
        action = "attachment"
    elif request.method == "DELETE":
        action = "delete"
    else:
        action = "update" if rev_before else "create"
    ok = isinstance(answer, dict) and status < 300
    outcome = outcome_of(status)
    reason = answer.get("reason") if isinstance(answer, dict) and not ok else None
    if status < 300 and not ok:
        outcome, reason = "unknown", "CouchDB's answer could not be read"
    record(request, action, outcome, db=db,
           doc_id=(answer.get("id") if ok else None) or path.doc_id, rev_before=rev_before,
           rev_after=answer.get("rev") if ok else None, doc_type=doc_type, reason=reason)  # fmt: skip


async def admit(request: web.Request) -> None:
    """Before a write is forwarded: the audit log's backpressure (see proxy/audit/log.py)."""
    sink = request.app[AUDIT]
    if isinstance(sink, AuditLog):
        await sink.admit()


# The intent of a write: [doc id, the rev it will have if known in advance (new_edits:false),
# the generation it will have if it updates a known rev (else None: a create)].
Planned = list[Any]
INTENT_REASON = "recorded before the write was forwarded; the entry after it tells the outcome"


def _generation(rev: object) -> int | None:
    head = rev.split("-", 1)[0] if isinstance(rev, str) else ""
    return int(head) if head.isdigit() else None


def planned(doc: Any, new_edits: bool = True, rev: object = None) -> Planned:
    """What writing `doc` will leave in CouchDB, as far as it is known before the write."""
    if not isinstance(doc, dict):
        return [None, None, None]
    doc_id = _str(doc.get("_id"))
    rev = rev if rev is not None else doc.get("_rev")
    if not new_edits:
        revisions = doc.get("_revisions")
        if isinstance(revisions, dict) and isinstance(revisions.get("ids"), list) and revisions["ids"]:
            return [doc_id, f"{revisions.get('start')}-{revisions['ids'][0]}", None]
        return [doc_id, _str(rev), None]
    before = _generation(rev)
    return [doc_id, None, before + 1 if before is not None else None]


def name_new_docs(docs: list[Any]) -> bool:
    """Give each new doc without `_id` one (as CouchDB would: a random UUID), so its intent
    can name it; True if any was named."""
    named = False
    for doc in docs:
        if isinstance(doc, dict) and "_id" not in doc:
            doc["_id"] = uuid.uuid4().hex
            named = True
    return named


async def intend(request: web.Request, db: str | None, writes: list[Planned], action: str,
                 **details: Any) -> None:  # fmt: skip
    """Store the intent of a write before it is forwarded (503 if the audit log cannot)."""
    sink = request.app[AUDIT]
    if not isinstance(sink, AuditLog) or sink.intents is None:
        return
    ids = {w[0] for w in writes}
    await sink.intend(entry(
        request, "intent", "unknown", db=db, doc_id=next(iter(ids)) if len(ids) == 1 else None,
        reason=INTENT_REASON, details={"for": action, "writes": writes, **details},
    ))  # fmt: skip


async def intend_docs(request: web.Request, db: str | None, docs: list[Any], new_edits: bool = True) -> None:
    await intend(
        request, db, [planned(d, new_edits) for d in docs], "bulk_docs" if len(docs) != 1 else "write"
    )


# A `_revs_diff` naming more missing revisions than this announces none (a PouchDB push
# asks about a batch at a time: 100 by default).
MAX_AHEAD = 1000


def announce_push(request: web.Request, db: str, user: str, pairs: list[tuple[str, str]]) -> None:
    """A replication push's `_revs_diff` told the device which revisions CouchDB lacks: the
    `_bulk_docs` that sends them follows. Store the intent naming them now, while the device
    reads them, without waiting (the answer does not depend on it): `intend_push` finds it."""
    sink = request.app[AUDIT]
    if not isinstance(sink, AuditLog) or sink.intents is None or not pairs or len(pairs) > MAX_AHEAD:
        return
    ids = {doc_id for doc_id, _ in pairs}
    details = {"for": "bulk_docs", "writes": [[i, r, None] for i, r in pairs], "ahead": True}
    sink.announce(entry(
        request, "intent", "unknown", db=db, doc_id=next(iter(ids)) if len(ids) == 1 else None,
        reason=INTENT_REASON, details=details,
    ), user, db, pairs)  # fmt: skip


async def intend_push(request: web.Request, db: str, user: str, docs: list[Any], new_edits: bool) -> None:
    """`intend_docs`, unless the write is a replication push (`new_edits: false`) whose every
    revision `user` announced ahead (`announce_push`): then wait until those intents are
    stored instead of storing another. Either way the write's exact revisions are named by a
    stored intent when this returns."""
    sink = request.app[AUDIT]
    if not new_edits and isinstance(sink, AuditLog):
        named = [planned(d, False) for d in docs]
        pairs = [(w[0], w[1]) for w in named if isinstance(w[0], str) and isinstance(w[1], str)]
        if len(pairs) == len(docs) and await sink.stored_ahead(user, db, pairs):
            return
    await intend_docs(request, db, docs, new_edits)


def background_intents(sink: object, db: str) -> Callable[[list[Any], bool], Awaitable[None]] | None:
    """The intents of couchgate's own background writes (the conflict monitor's merges)."""

    async def intend(docs: list[Any], new_edits: bool) -> None:
        if isinstance(sink, AuditLog):
            writes = [planned(d, new_edits) for d in docs]
            await sink.intend(AuditEntry("intent", "unknown", user="couchgate", db=db, reason=INTENT_REASON,
                                         details={"for": "auto_resolve", "writes": writes}))  # fmt: skip

    return intend
