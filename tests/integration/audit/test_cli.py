"""`couchgate audit verify` and `couchgate audit tail [--follow]` against the real backend,
checkpoints, and retention."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from audit_support import (
    batch_docs,
    chain_breaks,
    cli_env,
    entries,
    remove_entry,
    rewrite_batch,
    stored,
)
from rich.console import Console

from proxy.audit.chain import ChainChecker, entry_hash
from proxy.audit.cli import chain_entries, run_tail
from proxy.audit.retention import Retention
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT, COUCH
from proxy.logs import JsonFormatter

from support import Gateway, TestUser, audited_gateway, eventually


def audit_cli(backend: PouchServer, audit_db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", *args],
        env=cli_env(backend, audit_db),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def batched(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    """couchgate whose audit batches hold two entries each and are written only when full
    or flushed: entries land in batch docs the tests can predict (no intents: their own
    chain is tested in test_intents.py)."""
    async with audited_gateway(
        backend, db, audit_batch_size=2, audit_flush_interval=3600, audit_durable=False
    ) as gw:
        yield gw


async def write_in_pairs(gw: Gateway, db: str, user: TestUser, prefix: str, n: int) -> None:
    """`n` audited writes, flushed after every second one: batch docs [1, 2], [3, 4], ..."""
    for i in range(n):
        await gw.call("PUT", f"/{db}/{prefix}-{i}", auth=user.auth, json={})
        if i % 2:
            assert await gw.server.app[AUDIT].flush()  # type: ignore[attr-defined]


async def test_verify_finds_edited_and_deleted_entries(
    batched: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    await write_in_pairs(batched, db, users["alice"], "chained", 8)
    audit_db = batched.settings.audit_db
    assert sorted(len(d["entries"]) for d in batch_docs(backend, audit_db)) == [2, 2, 2, 2]
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 0 and "intact: 8 entries from 1 writers" in result.stdout, result.stdout

    def edit(entries: list[dict[str, Any]]) -> None:
        entries[1]["user"] = "someone-else"  # seq 2, the second entry of its batch doc

    rewrite_batch(backend, audit_db, 2, edit)
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1 and "seq 2: edited" in result.stdout, result.stdout
    remove_entry(backend, audit_db, 3)  # one entry taken out of its batch doc
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1 and "seq 3: missing" in result.stdout, result.stdout
    [batch] = [d for d in batch_docs(backend, audit_db) if d["first_seq"] == 5]
    backend.request("DELETE", f"/{audit_db}/{quote(batch['_id'], safe='')}?rev={batch['_rev']}")
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1, result.stdout
    assert "seq 5: missing" in result.stdout and "3 breaks in 5 entries" in result.stdout, result.stdout


async def test_an_entry_edited_inside_a_batch_doc_with_its_hash_recomputed_is_found(
    batched: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    """A forger who edits an entry in a batch doc and recomputes its hash (and the batch's
    `last_hash`) still breaks the link from the next entry, in the next batch doc."""
    await write_in_pairs(batched, db, users["alice"], "forged", 4)
    audit_db = batched.settings.audit_db

    def forge(entries: list[dict[str, Any]]) -> None:
        entries[1]["doc_id"] = "forged-elsewhere"  # seq 2, the last of its batch
        entries[1]["hash"] = entry_hash(entries[1])

    rewrite_batch(backend, audit_db, 2, forge)
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1 and "seq 3: relinked" in result.stdout, result.stdout
    assert "1 breaks in 4 entries" in result.stdout, result.stdout


async def test_deleting_the_newest_entries_shows_only_against_a_logged_checkpoint(
    agw: Gateway,
    backend: PouchServer,
    db: str,
    users: dict[str, TestUser],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    log = agw.server.app[AUDIT]
    log.checkpoint_interval = 0  # type: ignore[attr-defined]  # each flush logs one
    with caplog.at_level(logging.INFO, logger="couchgate.audit"):
        for i in range(4):
            await agw.call("PUT", f"/{db}/tail-{i}", auth=users["alice"].auth, json={})

        async def checkpointed() -> bool:
            return any(getattr(r, "audit_checkpoint", {}).get("seq") == 4 for r in caplog.records)

        assert await eventually(checkpointed)
    lines = [JsonFormatter().format(r) for r in caplog.records if hasattr(r, "audit_checkpoint")]
    logfile = tmp_path / "couchgate.log"
    logfile.write_text("\n".join(["not json", *lines]) + "\n")
    audit_db = agw.settings.audit_db
    newest = max(stored(backend, audit_db), key=lambda e: e["seq"])
    remove_entry(backend, audit_db, newest["seq"])  # its batch doc goes too if it held only that
    # The chain that is left is whole: without a checkpoint the cut cannot be seen...
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 0, result.stdout
    # ...against the logged one, it can.
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify", "--checkpoints", str(logfile))
    assert result.returncode == 1 and f"writer {log.writer} seq 4: truncated" in result.stdout, result.stdout  # type: ignore[attr-defined]
    mark = f"{log.writer}:4:{newest['hash']}"  # type: ignore[attr-defined]
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify", "--checkpoint", mark)
    assert result.returncode == 1 and "seq 4: truncated" in result.stdout, result.stdout


async def test_tail_prints_the_newest_entries(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    await agw.call("PUT", f"/{db}/tail-doc", auth=users["alice"].auth, json={})
    await agw.call("PUT", f"/{db}/other-doc", auth=users["alice"].auth, json={})
    await entries(agw, backend)
    out = await asyncio.to_thread(audit_cli, backend, agw.settings.audit_db, "tail", "--doc", "tail-doc")
    assert out.returncode == 0, out.stderr
    assert "tail-doc" in out.stdout and "create" in out.stdout and "alice" in out.stdout
    assert "other-doc" not in out.stdout


async def test_tail_follow_shows_a_burst_larger_than_its_page(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    for i in range(3):
        await agw.call("PUT", f"/{db}/pre-{i}", auth=alice, json={})
    await entries(agw, backend)
    out = io.StringIO()
    console = Console(file=out, width=250)
    args = argparse.Namespace(user="alice", doc=None, limit=5, follow=True, interval=0.05)
    follower = asyncio.create_task(run_tail(agw.settings, args, console))
    try:

        async def shown(text: str) -> bool:
            assert not follower.done(), follower.result()
            return text in out.getvalue()

        assert await eventually(lambda: shown("pre-2"))
        burst = [{"_id": f"burst-{i:02d}"} for i in range(60)]  # 60 entries at once; the page holds 5
        assert (await agw.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": burst}))[0] == 201
        await entries(agw, backend)  # flushed
        assert await eventually(lambda: shown("burst-59"))
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
    text = out.getvalue()
    assert [text.count(f"burst-{i:02d}") for i in range(60)] == [1] * 60
    assert [text.count(f"pre-{i}") for i in range(3)] == [1, 1, 1]


async def test_retention_removes_old_entries_and_verify_still_holds(
    batched: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    for i in range(6):
        await batched.call("PUT", f"/{db}/old-{i}", auth=users["alice"].auth, json={})
        await asyncio.sleep(0.002)  # distinct milliseconds
        if i % 2:
            assert await batched.server.app[AUDIT].flush()  # type: ignore[attr-defined]
    audit_db = batched.settings.audit_db
    chain = sorted(stored(backend, audit_db), key=lambda e: e["seq"])  # in batch docs [1, 2], [3, 4], [5, 6]
    cut = chain[3]["ts"]
    retention = Retention(batched.server.app[AUDIT], days=1)  # type: ignore[arg-type]
    removed = await retention.apply(now_ms=cut + 86_400_000 - 1)
    # Entries 1-3 are past the cutoff, but a batch doc goes whole, once its newest entry
    # is: entry 3 stays with entry 4.
    assert chain[2]["ts"] < cut and removed == 2
    assert sorted(e["seq"] for e in stored(backend, audit_db)) == [3, 4, 5, 6]
    assert await chain_breaks(batched) == []  # the retention marker explains the cut
    checker = ChainChecker()  # without the marker the cut would look like tampering
    async for entry in chain_entries(batched.server.app[COUCH], audit_db):
        checker.feed(entry)
    assert [(b.seq, b.problem) for b in checker.finish()] == [(1, "missing")]
    assert await retention.apply(now_ms=cut + 86_400_000) == 2  # now entry 4 is past it too
    assert sorted(e["seq"] for e in stored(backend, audit_db)) == [5, 6]
    assert await chain_breaks(batched) == []
