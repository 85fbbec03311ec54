"""`GET /_couchgate/audit` (admins) and `GET /_couchgate/audit/docs/{id}` (anyone who may
read that doc; whoever is not an admin sees only the writes made, and of each only who,
what and when: no client address, user agent, request, reason or refused attempt)."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from urllib.parse import quote

from aiohttp import web

from proxy.audit.log import AuditLog
from proxy.audit.query import MAX_LIMIT, AuditQuery, search
from proxy.couch.client import quote_id
from proxy.couch.docs import Docs, history
from proxy.errors import BadRequest, Forbidden, NotFound, NotImplementedHere, json_response
from proxy.keys import AUDIT, CALLER, COUCH, INDEX, SETTINGS
from proxy.params import limit_of


def audit_log(request: web.Request) -> AuditLog:
    sink = request.app[AUDIT]
    if not isinstance(sink, AuditLog):
        raise NotImplementedHere("the audit log is off (COUCHGATE_AUDIT_ENABLED)")
    return sink


MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# What a doc's history shows to those who are not admins: who changed what, and when.
HISTORY_FIELDS = frozenset(
    {"time", "ts", "user", "action", "outcome", "db", "doc_id", "rev_before", "rev_after", "doc_type"}
)


# What the OpenAPI spec says `since` and `until` are (openapi.yaml): ms since the epoch, or
# an ISO-8601 UTC date or time. Out-of-range fields roll over (`02-31` is March 2 or 3),
# so every value of the documented shape is understood.
TIME = re.compile(
    r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"(?:T([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{1,9}))?Z?)?$"
)


def parse_time(value: str | None, name: str) -> int | None:
    """Milliseconds since the epoch, from an ISO-8601 UTC time or a number of ms."""
    if value is None or value == "":
        return None
    if value.isascii() and value.isdigit():
        if int(value) > MAX_MS:
            raise BadRequest(f"{name} is past the year 9999")
        return int(value)
    match = TIME.match(value) if value.isascii() else None
    if match is None:
        raise BadRequest(f"{name} must be an ISO-8601 UTC time or milliseconds since the epoch")
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups()[:6])
    millis = int(((match.group(7) or "") + "000")[:3])
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * 1000 + millis


def query_from(params: Mapping[str, str], **fixed: str) -> AuditQuery:
    limit = limit_of(params.get("limit"), 100, MAX_LIMIT)
    since_ms = parse_time(params.get("since"), "since")
    until_ms = parse_time(params.get("until"), "until")
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise BadRequest("since is later than until")
    return AuditQuery(
        doc_id=fixed.get("doc_id", params.get("doc")),
        user=params.get("user"),
        action=params.get("action"),
        outcome=fixed.get("outcome", params.get("outcome")),
        since_ms=since_ms,
        until_ms=until_ms,
        limit=limit,
        bookmark=params.get("next"),
        db=fixed.get("db", params.get("db")),
    )


async def list_entries(request: web.Request) -> web.Response:
    """Audit entries, newest first, filtered by doc, user, action, outcome and time."""
    if not request[CALLER].is_admin:
        raise Forbidden("You are not a server admin.")
    log = audit_log(request)
    await log.flush()  # what was recorded before this request is visible to it
    return json_response(await search(request.app[COUCH], log.db, query_from(request.query)))


async def may_read_doc(request: web.Request, doc_id: str) -> bool:
    caller = request[CALLER]
    principal = caller.principal
    if principal.is_admin:
        return True
    if principal.name is None:
        return False
    if caller.offline:
        sync = request.app[INDEX]
        await sync.sync()
        return sync.index.is_readable_id(doc_id, caller.user, sync.settings)
    if not principal.upstream_headers:
        return False
    # Online users: whatever CouchDB lets them read with their own credentials.
    db = request.app[SETTINGS].db
    result = await request.app[COUCH].json(
        "GET", f"/{db}/{quote_id(doc_id)}", headers=dict(principal.upstream_headers), use_service=False
    )
    return result.ok


async def doc_history(request: web.Request) -> web.Response:
    """Every recorded write of one doc of one database (`db`, default the main one), newest
    first. Only admins may ask about another database."""
    doc_id = request.match_info["doc_id"]
    main_db = request.app[SETTINGS].db
    db = request.query.get("db") or main_db
    if db != main_db and not request[CALLER].is_admin:
        raise Forbidden("only admins may read the history of docs of other databases")
    if not await may_read_doc(request, doc_id):
        raise NotFound("missing")  # like any read of a doc outside one's scope
    log = audit_log(request)
    await log.flush()
    if request[CALLER].is_admin:
        query = query_from(request.query, doc_id=doc_id, db=db)
        return json_response(await search(request.app[COUCH], log.db, query))
    # Everyone else sees who changed what and when: the writes made, never attempts that
    # were refused, nor where from or with what anyone made them.
    query = query_from(request.query, doc_id=doc_id, db=db, outcome="written")
    page = await search(request.app[COUCH], log.db, query)
    entries = [{k: v for k, v in e.items() if k in HISTORY_FIELDS} for e in page["entries"]]
    if request[CALLER].offline:
        # Only the writes of the winner's own branch: a conflict leaf elsewhere may stand
        # outside the scope, and a revision outside it is never named (docs/security.md).
        branch = await winning_branch(request, db, doc_id)
        entries = [e for e in entries if (e.get("rev_after") or e.get("rev_before")) in branch]
        for entry in entries:  # what a write replaced may have been a leaf elsewhere
            if entry.get("rev_before") is not None and entry["rev_before"] not in branch:
                entry["rev_before"] = None
    page["entries"] = entries
    return json_response(page)


async def winning_branch(request: web.Request, db: str, doc_id: str) -> set[str]:
    """The revisions of the doc's winner and its ancestors (none for a deleted or missing
    doc); a read CouchDB answers otherwise refuses (`proxy.couch.docs`)."""
    doc = await Docs(request.app[COUCH], "/" + quote(db, safe="")).doc(doc_id, {"revs": "true"})
    return set(history(doc)) if doc is not None else set()
