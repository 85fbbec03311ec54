"""How the audit log is stored: a flushed batch of one writer is one CouchDB doc, bounded
in entries and bytes, written exactly once even when a write's answer is lost."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

import orjson
import pytest
from audit_support import batch_docs, chain_breaks, entries, stored

from proxy.audit.log import AuditLog
from proxy.couch.client import CouchClient, JsonResult
from proxy.devserver.backend import PouchServer
from proxy.errors import UpstreamUnavailable
from proxy.keys import AUDIT

from support import Gateway, TestUser, audited_gateway

BATCH = 10


@pytest.fixture
async def slow(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    """couchgate writing audit batches of BATCH entries, only when told to (or woken by a
    full batch): what one flush writes is up to the test."""
    async with audited_gateway(backend, db, audit_batch_size=BATCH, audit_flush_interval=3600) as gw:
        yield gw


def audit_log(gw: Gateway) -> AuditLog:
    log = gw.server.app[AUDIT]
    assert isinstance(log, AuditLog)
    return log


async def bulk(gw: Gateway, db: str, user: TestUser, ids: list[str]) -> None:
    """One `_bulk_docs`: its entries are all recorded before the writer can run."""
    status, rows, _ = await gw.call("POST", f"/{db}/_bulk_docs", auth=user.auth,
                                    json={"docs": [{"_id": i} for i in ids]})  # fmt: skip
    assert status == 201 and not any("error" in r for r in rows), rows


@pytest.mark.parametrize("n", [1, BATCH, 25])
async def test_one_flush_of_n_entries_writes_ceil_n_over_batch_docs(
    slow: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], n: int
) -> None:
    await bulk(slow, db, users["alice"], [f"flush-{i:02d}" for i in range(n)])
    assert await audit_log(slow).flush()
    docs = sorted(batch_docs(backend, slow.settings.audit_db), key=lambda d: d["first_seq"])
    assert len(docs) == math.ceil(n / BATCH)
    writer = audit_log(slow).writer
    for doc in docs:
        seqs = [e["seq"] for e in doc["entries"]]
        assert len(seqs) <= BATCH and seqs == list(range(doc["first_seq"], doc["last_seq"] + 1))
        assert doc["_id"] == f"{writer}:{doc['first_seq']:012d}" and doc["writer"] == writer
        assert doc["last_hash"] == doc["entries"][-1]["hash"]
    ids = [f"flush-{i:02d}" for i in range(n)]
    assert [e["doc_id"] for e in stored(backend, slow.settings.audit_db)] == ids
    assert [e["doc_id"] for e in await entries(slow, backend)] == ids[::-1]


async def test_a_batch_doc_stays_under_its_byte_bound(
    slow: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    log = audit_log(slow)
    log.max_batch_bytes = 3000  # a few entries' worth
    await bulk(slow, db, users["alice"], [f"sized-{i}-{'x' * 200}" for i in range(BATCH)])
    assert await log.flush()
    docs = batch_docs(backend, slow.settings.audit_db)
    assert len(docs) > 1  # the 10 entries fit one doc by count, not by size
    assert all(sum(len(orjson.dumps(e)) + 1 for e in d["entries"]) <= 3000 for d in docs)
    assert sorted(e["seq"] for e in stored(backend, slow.settings.audit_db)) == list(range(1, BATCH + 1))
    log.max_batch_bytes = 1  # smaller than any entry: one entry per doc, none refused
    await bulk(slow, db, users["alice"], ["big-1", "big-2"])
    assert await log.flush()
    assert len(batch_docs(backend, slow.settings.audit_db)) == len(docs) + 2
    assert await chain_breaks(slow) == []


class LostAnswers:
    """CouchDB as the audit writer sees it when the connection drops after a batch write
    reached CouchDB: the write lands, its answer never arrives (for the next `lose` writes)."""

    def __init__(self, couch: CouchClient) -> None:
        self.couch = couch
        self.lose = 0
        self.batch_writes: list[tuple[str, int]] = []  # (doc id, CouchDB's status)

    async def json(self, method: str, path: str, **kwargs: Any) -> JsonResult:
        result = await self.couch.json(method, path, **kwargs)
        if method == "PUT" and ":" in unquote(path):
            self.batch_writes.append((unquote(path.rsplit("/", 1)[1]), result.status))
            if self.lose:
                self.lose -= 1
                raise UpstreamUnavailable("CouchDB is not reachable")
        return result


async def test_a_retried_batch_write_that_had_landed_is_not_duplicated(
    slow: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    log, alice, audit_db = audit_log(slow), users["alice"], slow.settings.audit_db
    upstream = LostAnswers(log.couch)
    log.couch = upstream  # type: ignore[assignment]
    first = f"{log.writer}:{1:012d}"
    # The same batch again: its retry is answered 409, and the stored doc holds those entries.
    await bulk(slow, db, alice, ["lost-0", "lost-1", "lost-2"])
    upstream.lose = 1
    assert await log.flush() is False and len(log.queue) == 3 and log.written == 0
    assert await log.flush()
    assert upstream.batch_writes == [(first, 201), (first, 409)]
    newest = stored(backend, audit_db)[-1]
    assert (len(log.queue), log.written, log.last_written) == (0, 3, (3, newest["hash"]))
    # A longer batch: entries recorded since the lost answer join the retry, whose first part
    # is stored already; only the rest is written, under the next id.
    await bulk(slow, db, alice, ["late-0", "late-1"])
    upstream.lose = 1
    assert await log.flush() is False and len(log.queue) == 2
    await bulk(slow, db, alice, ["later-0", "later-1", "later-2"])
    upstream.batch_writes.clear()
    assert await log.flush()
    assert upstream.batch_writes == [(f"{log.writer}:{4:012d}", 409), (f"{log.writer}:{6:012d}", 201)]
    assert sorted(len(d["entries"]) for d in batch_docs(backend, audit_db)) == [2, 3, 3]
    assert [e["seq"] for e in sorted(stored(backend, audit_db), key=lambda e: e["seq"])] == list(range(1, 9))
    assert log.written == 8 and log.health()["error"] is None
    assert len(await entries(slow, backend)) == 8
    assert await chain_breaks(slow) == []


async def test_a_batch_id_taken_by_other_entries_keeps_them_queued(
    slow: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    log, audit_db = audit_log(slow), slow.settings.audit_db
    assert await log.flush()  # the audit database exists
    squatter = {"_id": f"{log.writer}:{1:012d}", "entries": [{"seq": 1, "hash": "0" * 64}]}
    assert backend.request("PUT", f"/{audit_db}/{quote(squatter['_id'], safe='')}", squatter)[0] == 201
    await bulk(slow, db, users["alice"], ["kept-0", "kept-1"])
    assert await log.flush() is False  # never taken for written
    assert len(log.queue) == 2 and "stored with other entries" in str(log.health()["error"])
    assert stored(backend, audit_db) == []
