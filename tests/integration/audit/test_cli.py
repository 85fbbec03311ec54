"""`couchgate audit verify` and `couchgate audit tail [--follow]` against the real backend,
checkpoints, and retention."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from audit_support import chain_breaks, cli_env, entries, stored
from rich.console import Console

from proxy.audit.chain import ChainChecker
from proxy.audit.cli import chain_entries, run_tail
from proxy.audit.retention import Retention
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT, COUCH
from proxy.logs import JsonFormatter

from support import Gateway, TestUser, eventually


def audit_cli(backend: PouchServer, audit_db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", *args],
        env=cli_env(backend, audit_db),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_verify_finds_edited_and_deleted_entries(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    for i in range(4):
        await agw.call("PUT", f"/{db}/chained-{i}", auth=users["alice"].auth, json={})
    await entries(agw, backend)
    audit_db = agw.settings.audit_db
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 0 and "intact: 4 entries from 1 writers" in result.stdout, result.stdout
    chain = sorted(stored(backend, audit_db), key=lambda e: e["seq"])
    edited = {**chain[1], "user": "someone-else"}
    backend.request("PUT", f"/{audit_db}/{edited['_id']}", edited)
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1 and f"seq {chain[1]['seq']}: edited" in result.stdout, result.stdout
    backend.request("DELETE", f"/{audit_db}/{chain[2]['_id']}?rev={chain[2]['_rev']}")
    result = await asyncio.to_thread(audit_cli, backend, audit_db, "verify")
    assert result.returncode == 1 and f"seq {chain[2]['seq']}: missing" in result.stdout, result.stdout


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
    backend.request("DELETE", f"/{audit_db}/{newest['_id']}?rev={newest['_rev']}")
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
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    for i in range(6):
        await agw.call("PUT", f"/{db}/old-{i}", auth=users["alice"].auth, json={})
        await asyncio.sleep(0.002)
    await entries(agw, backend)
    chain = sorted(stored(backend, agw.settings.audit_db), key=lambda e: e["seq"])
    cut = chain[3]["ts"]
    removed = await Retention(agw.server.app[AUDIT], days=1).apply(now_ms=cut + 86_400_000 - 1)  # type: ignore[arg-type]
    assert removed == len([e for e in chain if e["ts"] < cut]) >= 3
    assert sorted(e["seq"] for e in stored(backend, agw.settings.audit_db)) == list(range(removed + 1, 7))
    assert await chain_breaks(agw) == []  # the retention marker explains the cut
    checker = ChainChecker()  # without the marker the cut would look like tampering
    async for entry in chain_entries(agw.server.app[COUCH], agw.settings.audit_db):
        checker.feed(entry)
    assert [(b.seq, b.problem) for b in checker.finish()] == [(1, "missing")]
