"""The one audit recorder: every entry couchgate makes goes through a `Recorder`, and what
CouchDB's answer to a write means for the audit log is read from one table (`OUTCOMES`).

A `Recorder` is made once for a request (`Recorder.of`: who, from where, through which
request) and handed to the code that writes: the answer hook of a forwarded write
(`proxy.forward.serve`, `proxy.audit.capture`), offline users' writes (`proxy.offline.writes`),
the import pipeline (`proxy.importer.pipeline`). It records entries (`record`, `doc`,
`answered`), applies the audit log's backpressure (`admit`) and stores the intents of the
crash-proof mode (`intend`, `intend_docs`, `intend_push`, `announce_push`, below).
`record(request, ...)` records a request's single event (a login, a refusal).

The outcome of a write, from CouchDB's answer (`outcome_of`, `row_outcome`, `answer_outcome`):

    2xx; a `_bulk_docs` row without `error`              written
    409; a row's `conflict`                              conflict
    401, 403; a row's `unauthorized` or `forbidden`      forbidden
    any other error                                      invalid
    a 2xx answer couchgate cannot read                   unknown

Crash-proof (COUCHGATE_AUDIT_DURABLE, on by default): before a write is sent, an intent
(`action: intent`, `outcome: unknown`, `details.writes`: `[doc id, rev, generation]` of
each doc it may write) is stored in the writer's chain of intents; the entry recorded
after CouchDB's answer says what happened. If couchgate dies in between, the intent is the
write's entry, and `couchgate audit verify` counts the write as accounted for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy import observe
from proxy.audit.api import AuditEntry, AuditSink, Outcome, clean_text
from proxy.audit.log import AuditLog
from proxy.clients import client_address
from proxy.errors import error_name
from proxy.keys import AUDIT, CALLER
from proxy.logs import REQUEST_ID_KEY

# CouchDB's `error` (a `_bulk_docs` row's, or its status's name) -> the outcome; any other
# error is `invalid`: CouchDB refused the doc for what it is.
OUTCOMES: Mapping[str, Outcome] = {
    "conflict": "conflict",
    "forbidden": "forbidden",
    "unauthorized": "forbidden",
}
UNREADABLE_ANSWER = "CouchDB's answer could not be read: the outcome of this doc is not known"


def error_outcome(error: object) -> Outcome:
    """The outcome of a write CouchDB refused with `error`."""
    return OUTCOMES.get(str(error), "invalid")


def outcome_of(status: int) -> Outcome:
    """The outcome of a write CouchDB answered with `status`."""
    return "written" if status < 300 else error_outcome(error_name(status))


def row_outcome(row: Mapping[str, Any]) -> tuple[Outcome, str | None, str | None]:
    """(outcome, rev written, reason) of one row of CouchDB's `_bulk_docs` answer."""
    if "error" in row:
        return error_outcome(row["error"]), None, str(row.get("reason"))
    rev = row.get("rev")
    return "written", rev if isinstance(rev, str) else None, None


def failed_outcome(status: int, answer: object) -> tuple[Outcome, str | None]:
    """(outcome, reason) of a doc whose write CouchDB's answer has nothing on: a request it
    refused as a whole (`status` >= 300), or an answer couchgate cannot read."""
    if status < 300:
        return "unknown", UNREADABLE_ANSWER
    reason = answer.get("reason") if isinstance(answer, dict) else None
    return outcome_of(status), None if reason is None else str(reason)


def answer_outcome(status: int, answer: object) -> tuple[Outcome, str | None, str | None]:
    """(outcome, rev written, reason) of CouchDB's answer (parsed) to a one-doc write."""
    if status < 300 and isinstance(answer, dict):
        rev = answer.get("rev")
        return "written", rev if isinstance(rev, str) else None, None
    outcome, reason = failed_outcome(status, answer)
    return outcome, None, reason


@dataclass(frozen=True, slots=True)
class Recorder:
    """The audit entries of one request, with who, from where and through which request
    filled in once; they go to the application's audit log (`sink`), which never blocks."""

    sink: AuditSink
    user: str | None = None
    roles: tuple[str, ...] = ()
    request_id: str | None = None
    client: str | None = None
    user_agent: str | None = None
    path: str | None = None

    @classmethod
    def of(cls, request: web.Request) -> Recorder:
        principal = caller.principal if (caller := request.get(CALLER)) is not None else None
        user_agent = request.headers.get("User-Agent")
        return cls(
            request.app[AUDIT],
            user=principal.name if principal else None,
            roles=principal.roles if principal else (),
            request_id=request.get(REQUEST_ID_KEY),
            client=client_address(request),
            user_agent=clean_text(user_agent) if user_agent is not None else None,
            path=clean_text(request.rel_url.raw_path),
        )

    def entry(self, action: str, outcome: Outcome, **fields: Any) -> AuditEntry:
        return AuditEntry(
            action=action,
            outcome=outcome,
            user=fields.pop("user", self.user),
            roles=self.roles,
            request_id=self.request_id,
            client=self.client,
            user_agent=self.user_agent,
            path=self.path,
            **fields,
        )

    def record(self, action: str, outcome: Outcome, **fields: Any) -> None:
        self.sink.record(self.entry(action, outcome, **fields))
        observe.audited(action, outcome)  # metrics: refusals and failed logins are counted from here

    def doc(
        self, action: str, outcome: Outcome, db: str | None, doc: Mapping[str, Any], **fields: Any
    ) -> None:
        """The entry of a write of `doc`: its `_id` and `type` named, unless `fields` name them."""
        if "doc_id" not in fields:
            doc_id = doc.get("_id")
            fields["doc_id"] = doc_id if isinstance(doc_id, str) else None
        if "doc_type" not in fields:
            doc_type = doc.get("type")
            fields["doc_type"] = doc_type if isinstance(doc_type, str) else None
        self.record(action, outcome, db=db, **fields)

    def answered(
        self, action: str, status: int, answer: object, db: str | None, doc: Mapping[str, Any], **fields: Any
    ) -> None:
        """The entry of a one-doc write CouchDB answered with `status` and `answer` (parsed)."""
        outcome, rev_after, reason = answer_outcome(status, answer)
        self.doc(action, outcome, db, doc, rev_after=rev_after, reason=reason, **fields)

    async def admit(self) -> None:
        """Before a write is sent: the audit log's backpressure (see proxy/audit/log.py)."""
        if isinstance(self.sink, AuditLog):
            await self.sink.admit()

    async def intend(self, db: str | None, writes: list[Planned], action: str, **details: Any) -> None:
        """Store the intent of a write before it is sent (503 if the audit log cannot)."""
        sink = self.sink
        if not isinstance(sink, AuditLog) or sink.intents is None:
            return
        ids = {w[0] for w in writes}
        await sink.intend(self.entry(
            "intent", "unknown", db=db, doc_id=next(iter(ids)) if len(ids) == 1 else None,
            reason=INTENT_REASON, details={"for": action, "writes": writes, **details},
        ))  # fmt: skip

    async def intend_docs(self, db: str | None, docs: list[Any], new_edits: bool = True) -> None:
        await self.intend(
            db, [planned(d, new_edits) for d in docs], "bulk_docs" if len(docs) != 1 else "write"
        )

    def announce_push(self, db: str, user: str, pairs: list[tuple[str, str]]) -> None:
        """A replication push's `_revs_diff` told the device which revisions CouchDB lacks:
        the `_bulk_docs` that sends them follows. Store the intent naming them now, while the
        device reads them, without waiting (the answer does not depend on it): `intend_push`
        finds it."""
        sink = self.sink
        if not isinstance(sink, AuditLog) or sink.intents is None or not pairs or len(pairs) > MAX_AHEAD:
            return
        ids = {doc_id for doc_id, _ in pairs}
        details = {"for": "bulk_docs", "writes": [[i, r, None] for i, r in pairs], "ahead": True}
        sink.announce(self.entry(
            "intent", "unknown", db=db, doc_id=next(iter(ids)) if len(ids) == 1 else None,
            reason=INTENT_REASON, details=details,
        ), user, db, pairs)  # fmt: skip

    async def intend_push(self, db: str, user: str, docs: list[Any], new_edits: bool) -> None:
        """`intend_docs`, unless the write is a replication push (`new_edits: false`) whose
        every revision `user` announced ahead (`announce_push`): then wait until those intents
        are stored instead of storing another. Either way the write's exact revisions are
        named by a stored intent when this returns."""
        sink = self.sink
        if not new_edits and isinstance(sink, AuditLog):
            named = [planned(d, False) for d in docs]
            pairs = [(w[0], w[1]) for w in named if isinstance(w[0], str) and isinstance(w[1], str)]
            if len(pairs) == len(docs) and await sink.stored_ahead(user, db, pairs):
                return
        await self.intend_docs(db, docs, new_edits)


def record(request: web.Request, action: str, outcome: Outcome, **fields: Any) -> None:
    """Record one event of `request` (a login, a refusal, a token revoked)."""
    Recorder.of(request).record(action, outcome, **fields)


# The intent of a write: [doc id, the rev it will have if known in advance (new_edits:false),
# the generation it will have if it updates a known rev (else None: a create)].
Planned = list[Any]
INTENT_REASON = "recorded before the write was forwarded; the entry after it tells the outcome"
# A `_revs_diff` naming more missing revisions than this announces none (a PouchDB push
# asks about a batch at a time: 100 by default).
MAX_AHEAD = 1000


def _generation(rev: object) -> int | None:
    head = rev.split("-", 1)[0] if isinstance(rev, str) else ""
    return int(head) if head.isdigit() else None


def planned(doc: Any, new_edits: bool = True, rev: object = None) -> Planned:
    """What writing `doc` will leave in CouchDB, as far as it is known before the write."""
    if not isinstance(doc, dict):
        return [None, None, None]
    doc_id = doc.get("_id")
    doc_id = doc_id if isinstance(doc_id, str) else None
    rev = rev if rev is not None else doc.get("_rev")
    if not new_edits:
        revisions = doc.get("_revisions")
        if isinstance(revisions, dict) and isinstance(revisions.get("ids"), list) and revisions["ids"]:
            return [doc_id, f"{revisions.get('start')}-{revisions['ids'][0]}", None]
        return [doc_id, rev if isinstance(rev, str) else None, None]
    before = _generation(rev)
    return [doc_id, None, before + 1 if before is not None else None]


def background_intents(sink: object, db: str) -> Callable[[list[Any], bool], Awaitable[None]] | None:
    """The intents of couchgate's own background writes (the conflict monitor's merges)."""

    async def intend(docs: list[Any], new_edits: bool) -> None:
        if isinstance(sink, AuditLog):
            writes = [planned(d, new_edits) for d in docs]
            await sink.intend(AuditEntry("intent", "unknown", user="couchgate", db=db, reason=INTENT_REASON,
                                         details={"for": "auto_resolve", "writes": writes}))  # fmt: skip

    return intend
