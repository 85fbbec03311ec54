"""The audit log's parts that need no server: the hash chain detects edited, deleted,
reordered and truncated entries; entries are built whatever the input; writes are
classified; unreadable answers are recorded as unknown."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.audit.api import AuditEntry
from proxy.audit.chain import GENESIS, ChainChecker, Checkpoint, entry_hash, verify
from proxy.audit.log import AuditLog
from proxy.audit.recorder import Recorder, outcome_of, row_outcome
from proxy.couch.client import JsonResult
from proxy.keys import AUDIT


def chain(n: int, writer: str = "w1") -> list[dict[str, Any]]:
    entries, prev = [], GENESIS
    for seq in range(1, n + 1):
        entry: dict[str, Any] = {
            "writer": writer,
            "seq": seq,
            "prev_hash": prev,
            "action": "create",
            "doc_id": f"d{seq}",
        }
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def test_intact_chains_verify() -> None:
    assert verify(chain(5) + chain(3, "w2")) == []
    assert verify([{**e, "_rev": "9-x"} for e in chain(3)]) == []  # CouchDB's own fields don't count


@given(st.integers(min_value=1, max_value=8), st.data())
def test_any_edit_is_found(n: int, data: st.DataObject) -> None:
    entries = chain(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    entries[i]["doc_id"] = "tampered"
    assert [(b.seq, b.problem) for b in verify(entries)] == [(i + 1, "edited")]


def test_deleted_entry_is_a_gap() -> None:
    entries = chain(5)
    del entries[2]
    assert [(b.seq, b.problem) for b in verify(entries)] == [(3, "missing")]
    assert [(b.seq, b.problem) for b in verify(chain(5)[1:])] == [(1, "missing")]


def test_rehashed_forgery_breaks_the_link() -> None:
    entries = chain(4)
    entries[1]["doc_id"] = "forged"
    entries[1]["hash"] = entry_hash(entries[1])  # the forger recomputes its hash...
    assert [(b.seq, b.problem) for b in verify(entries)] == [(3, "relinked")]  # ...but not the next link


def test_retention_cut_is_expected() -> None:
    assert verify(chain(6)[3:], removed_up_to={"w1": 3}) == []
    assert [(b.seq, b.problem) for b in verify(chain(6)[4:], removed_up_to={"w1": 3})] == [(4, "missing")]


def test_truncation_shows_against_a_checkpoint_only() -> None:
    full = chain(5)
    mark = Checkpoint("w1", 5, full[-1]["hash"])
    assert verify(full[:3]) == []  # a cut tail leaves a whole chain
    assert [(b.seq, b.problem) for b in verify(full[:3], checkpoints=[mark])] == [(4, "truncated")]
    assert [(b.seq, b.problem) for b in verify([], checkpoints=[mark])] == [(1, "truncated")]
    assert verify(full, checkpoints=[mark]) == []
    assert verify(full + chain(2, "w2"), checkpoints=[Checkpoint("w1", 3, full[2]["hash"])]) == []
    rewritten = Checkpoint("w1", 5, "f" * 64)  # a chain rebuilt, hashes and all, since the checkpoint
    assert [(b.seq, b.problem) for b in verify(full, checkpoints=[rewritten])] == [(5, "edited")]


@given(st.lists(st.integers(min_value=0, max_value=9), max_size=6), st.integers(min_value=1, max_value=9))
def test_streaming_checker_agrees_with_verify(deleted: list[int], n: int) -> None:
    entries = [e for i, e in enumerate(chain(n) + chain(4, "w2")) if i not in deleted]
    checker = ChainChecker()
    for entry in sorted(entries, key=lambda e: (e["writer"], e["seq"])):
        checker.feed(entry)
    assert checker.finish() == verify(entries)


# -- AuditLog.record: never raises, never numbers an entry it could not build -------------


def test_text_that_is_not_utf8_is_recorded_replaced() -> None:
    log = AuditLog(None, "audit")  # type: ignore[arg-type]
    log.record(AuditEntry(action="create", outcome="written", user_agent="probe\udcff", reason="\ud800"))
    log.record(AuditEntry(action="x", outcome="written", details={"n": 2**70, "o": object(), 1: ["\udcff"]}))
    first, second = log.queue
    assert (first["user_agent"], first["reason"], first["seq"]) == ("probe\ufffd", "?", 1)
    assert second["details"]["n"] == str(2**70) and second["details"]["1"] == ["\ufffd"]
    assert orjson.loads(orjson.dumps(list(log.queue)))  # what is queued can be written
    assert verify(list(log.queue)) == [] and log.failed == 0


def test_an_entry_that_cannot_be_built_is_logged_and_leaves_no_gap(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(None, "audit")  # type: ignore[arg-type]
    log.record(AuditEntry(action="create", outcome="written"))
    log.record(None)  # type: ignore[arg-type]  # raises inside: caught, logged, counted
    log.record(AuditEntry(action="delete", outcome="written"))
    assert [e["seq"] for e in log.queue] == [1, 2] and verify(list(log.queue)) == []
    assert log.failed == 1 and log.health()["failed"] == 1
    assert any("could not be recorded" in r.getMessage() and r.exc_info for r in caplog.records)


class RefusingSecurity:
    """An upstream whose `_security` write fails (couchgate must not go on as if it held)."""

    async def json(self, method: str, path: str, **_: Any) -> JsonResult:
        status = 500 if path.endswith("/_security") else 201
        return JsonResult(status, {"error": "x"} if status == 500 else {"ok": True}, {})


async def test_the_audit_database_must_become_admin_only() -> None:
    log = AuditLog(RefusingSecurity(), "audit")  # type: ignore[arg-type]
    log.record(AuditEntry(action="create", outcome="written"))
    assert await log.flush() is False
    assert log.last_error == "cannot make the audit database admin-only (500)"
    assert not log.db_ready and len(log.queue) == 1


# -- what is a write, and entries for answers that cannot be read -------------------------


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("PUT", "/db/doc", "doc"),
        ("DELETE", "/db/doc", "doc"),
        ("POST", "/db", "create"),
        ("PUT", "/db", "db"),
        ("DELETE", "/db", "db"),
        ("PUT", "/db/doc/att.txt", "attachment"),
        ("POST", "/db/_bulk_docs", "bulk"),
        ("PUT", "/db/_security", "security"),
        ("POST", "/db/_purge", "purge"),
        ("POST", "/db/_index", "index"),
        ("DELETE", "/db/_index/_design/x/json/n", "index"),
        ("PUT", "/db/_design/x", "doc"),
        ("PUT", "/db/_design/x/_update/h/doc", "update_handler"),
        ("POST", "/db/_design/x/_update/h", "update_handler"),
        ("POST", "/db/_design/x/_view/v", None),  # a query with keys: a read
        ("POST", "/db/_find", None),
        ("POST", "/db/_all_docs", None),
        ("POST", "/db/_changes", None),
        ("POST", "/db/_revs_diff", None),
        ("POST", "/db/_bulk_get", None),
        ("PUT", "/db/_local/checkpoint", None),
        ("GET", "/db/doc", None),
        ("POST", "/_session", None),
    ],
)
def test_write_kinds(method: str, path: str, kind: str | None) -> None:
    assert capture.write_kind(method, CouchPath.parse(path)) == kind


class Collect:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


def bulk_entries(body: dict[str, Any], status: int, answer: bytes) -> list[tuple[Any, ...]]:
    return [(e.action, e.doc_id, e.outcome, e.rev_after) for e in bulk_audit(body, status, answer)]


def bulk_audit(body: dict[str, Any], status: int, answer: bytes) -> list[AuditEntry]:
    app = web.Application()
    sink = Collect()
    app[AUDIT] = sink
    request = make_mocked_request("POST", "/db/_bulk_docs", app=app)
    capture.record_write(
        Recorder.of(request), request, CouchPath.parse("/db/_bulk_docs"), "bulk", status,
        orjson.dumps(body), answer,
    )  # fmt: skip
    return sink.entries


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "written"), (201, "written"), (202, "written"), (400, "invalid"), (401, "forbidden"),
     (403, "forbidden"), (404, "invalid"), (409, "conflict"), (412, "invalid"), (500, "invalid")],
)  # fmt: skip
def test_the_outcome_of_a_write_by_couchdbs_status(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_the_outcome_of_a_bulk_docs_row() -> None:
    assert row_outcome({"ok": True, "id": "a", "rev": "1-a"}) == ("written", "1-a", None)
    conflict = {"id": "a", "error": "conflict", "reason": "Document update conflict."}
    assert row_outcome(conflict) == ("conflict", None, "Document update conflict.")
    # A `validate_doc_update` that refuses, with CouchDB's `forbidden` or `unauthorized`.
    assert row_outcome({"id": "a", "error": "forbidden", "reason": "no"}) == ("forbidden", None, "no")
    assert row_outcome({"id": "a", "error": "unauthorized", "reason": "no"}) == ("forbidden", None, "no")
    assert row_outcome({"id": "a", "error": "doc_validation", "reason": "bad"}) == ("invalid", None, "bad")


def test_each_doc_of_a_bulk_docs_refused_whole_carries_couchdbs_reason() -> None:
    docs = {"docs": [{"_id": "a"}, {"_id": "b", "_rev": "1-x"}]}
    refused = b'{"error":"forbidden","reason":"closed for writes"}'
    entries = bulk_audit(docs, 403, refused)
    assert [(e.doc_id, e.outcome, e.reason) for e in entries] == [
        ("a", "forbidden", "closed for writes"),
        ("b", "forbidden", "closed for writes"),
    ]


def test_an_answer_that_cannot_be_read_makes_each_doc_unknown() -> None:
    docs = {"docs": [{"_id": "a"}, {"_id": "b", "_rev": "1-x"}]}
    cut = b'[{"ok":true,"id":"a","rev":"1-a"},{"ok":tr'  # the answer was cut short
    assert bulk_entries(docs, 201, cut) == [
        ("create", "a", "unknown", None),
        ("update", "b", "unknown", None),
    ]
    missing_row = b'[{"ok":true,"id":"a","rev":"1-a"}]'
    assert bulk_entries(docs, 201, missing_row) == [
        ("create", "a", "written", "1-a"),
        ("update", "b", "unknown", None),
    ]
    replicated = {"docs": [{"_id": "a", "_rev": "2-a"}], "new_edits": False}
    assert bulk_entries(replicated, 201, b"[]") == [("replicate", "a", "written", "2-a")]
    assert bulk_entries(replicated, 201, b"[{") == [("replicate", "a", "unknown", None)]


# -- batch docs: bounded in entries and bytes ---------------------------------------------


def test_a_batch_is_bounded_by_count_and_by_bytes() -> None:
    log = AuditLog(None, "audit", batch_size=3)  # type: ignore[arg-type]
    for i in range(7):
        log.record(AuditEntry(action="create", outcome="written", doc_id=f"d{i}", reason="x" * 100 * i))
    assert [e["seq"] for e in log.next_batch()] == [1, 2, 3]
    log.max_batch_bytes = sum(len(orjson.dumps(e)) + 1 for e in list(log.queue)[:2])
    assert [e["seq"] for e in log.next_batch()] == [1, 2]
    log.max_batch_bytes = 1  # an entry larger than the bound still goes, alone
    assert [e["seq"] for e in log.next_batch()] == [1]
    doc = AuditLog.batch_doc(log.writer, log.next_batch())
    assert doc["_id"] == f"{log.writer}:000000000001" and (doc["first_seq"], doc["last_seq"]) == (1, 1)
    assert doc["last_hash"] == log.queue[0]["hash"] and verify(doc["entries"]) == []
