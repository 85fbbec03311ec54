"""couchgate killed (SIGKILL, a real process) in the middle of an import: every write that
reached CouchDB is accounted for in the audit log, by its entry or by the intent stored
before it, and `couchgate audit verify` checks exactly that against `_changes`."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson
from import_support import couchgate_process
from rich.console import Console

from proxy.audit.cli import run_verify
from proxy.devserver.backend import PouchServer

from support import basic, gateway_settings

DOCS = 20_000


def doc_count(backend: PouchServer, db: str) -> int:
    status, body = backend.request("GET", f"/{db}")
    assert status == 200, body
    return int(body["doc_count"])  # type: ignore[index]


async def verify(backend: PouchServer, db: str, audit_db: str) -> tuple[int, str]:
    console = Console(record=True, width=200)
    code = await run_verify(gateway_settings(backend, db, audit_db=audit_db), console)
    return code, console.export_text()


async def test_a_couchgate_killed_mid_import_leaves_no_write_without_an_entry(
    backend: PouchServer, db: str
) -> None:
    audit_db = f"audit-{uuid.uuid4().hex[:10]}"
    admin = basic(backend.admin_user, backend.admin_password)

    async def lines() -> AsyncIterator[bytes]:
        for start in range(0, DOCS, 500):
            yield b"".join(
                orjson.dumps({"_id": f"d{i:05d}", "n": i}) + b"\n" for i in range(start, start + 500)
            )
            await asyncio.sleep(0)

    try:
        async with (
            couchgate_process(backend, db, COUCHGATE_AUDIT_DB=audit_db) as (url, server),
            aiohttp.ClientSession() as http,
        ):

            async def run_import() -> None:
                headers = {"Authorization": admin, "Content-Type": "application/x-ndjson"}
                async with http.post(f"{url}/{db}/_couchgate/import", data=lines(), headers=headers) as resp:
                    await resp.read()

            importing = asyncio.create_task(run_import())
            for _ in range(2000):  # until part of the import has reached CouchDB
                if doc_count(backend, db) >= 1500 or importing.done():
                    break
                await asyncio.sleep(0.02)
            server.send_signal(signal.SIGKILL)
            await server.wait()
            await asyncio.gather(importing, return_exceptions=True)
        written = doc_count(backend, db)
        assert 1500 <= written < DOCS, f"killed mid-import: {written} of {DOCS} written"
        code, report = await verify(backend, db, audit_db)
        assert code == 0, report
        assert "every write in the database accounted for" in report
        # The gap check is real: a write that did not pass through couchgate has no entry.
        assert backend.request("PUT", f"/{db}/behind-its-back", {"n": 1})[0] == 201
        code, report = await verify(backend, db, audit_db)
        assert code == 1 and f"{db}/behind-its-back" in report and "1 writes" in report, report
    finally:
        backend.request("DELETE", f"/{audit_db}")
