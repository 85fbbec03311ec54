"""What writers hand to the audit log, and the sink they hand it to.

Writers (forwarded writes, offline users' writes, import, conflicts, auth) record through
a `proxy.audit.recorder.Recorder`, which builds each `AuditEntry` and hands it to the sink
(`request.app[AUDIT]`, the conflict monitor's own too): `record(entry)` never blocks and
never raises, and entries are written in batches off the request path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Outcome = Literal[
    "written", "forbidden", "conflict", "invalid", "success", "failure", "denied", "error", "unknown"
]  # "unknown": CouchDB's answer (or the request) could not be read, so the outcome is not known


def clean_text(value: str) -> str:
    """`value` as valid UTF-8 text. aiohttp decodes header bytes that are not UTF-8 into
    lone surrogates (`\\xff` -> `\\udcff`), which no JSON encoder accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    return value


@dataclass(frozen=True)
class AuditEntry:
    action: str  # create | update | delete | bulk_docs | attachment | import | resolve | split | login | ...
    outcome: Outcome
    user: str | None = None
    roles: tuple[str, ...] = ()
    db: str | None = None
    doc_id: str | None = None
    rev_before: str | None = None
    rev_after: str | None = None
    doc_type: str | None = None
    request_id: str | None = None
    client: str | None = None
    user_agent: str | None = None
    reason: str | None = None
    path: str | None = None
    details: dict[str, object] = field(default_factory=dict)


class AuditSink(Protocol):
    def record(self, entry: AuditEntry) -> None: ...


class NullAudit:
    """Used when auditing is off."""

    def record(self, entry: AuditEntry) -> None:
        return None
