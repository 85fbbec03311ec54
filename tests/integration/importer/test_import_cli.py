"""`couchgate import FILE`: against a running couchgate, and its exit code when the answer
reports docs not imported or ends early (those answers come from a stand-in server: the
faults are what is being tested)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from import_support import couchgate_process

from proxy.devserver.backend import PouchServer

from support import TestUser


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "import", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_against_a_running_couchgate(
    tmp_path: Path, backend: PouchServer, users: dict[str, TestUser]
) -> None:
    backend.request("PUT", "/cli-target")
    try:
        async with couchgate_process(backend, "cli-target") as (url, _):
            export = tmp_path / "export.json"
            rows = [{"id": f"e{i}", "doc": {"_id": f"e{i}", "_rev": "4-x"}} for i in range(30)]
            export.write_bytes(orjson.dumps({"rows": [*rows, {"id": "bad", "doc": None}]}))
            results = tmp_path / "r.jsonl"
            cli = [str(export), "--url", url, "--user", backend.admin_user, "--password", backend.admin_password,
                   "--results", str(results)]  # fmt: skip
            code, out = await run_cli(*cli)
            assert code == 1, out  # one row carried no doc
            lines = [orjson.loads(line) for line in results.read_text().splitlines()]
            assert [r["status"] for r in lines] == ["created"] * 30 + ["invalid"]
            assert "created" in out and "30" in out
            export.write_bytes(orjson.dumps([{"_id": f"e{i}"} for i in range(30)]))
            code, out = await run_cli(*cli)
            assert code == 0, out
            assert {orjson.loads(line)["status"] for line in results.read_text().splitlines()} == {
                "unchanged"
            }
    finally:
        backend.request("DELETE", "/cli-target")


ROW_A = {"index": 0, "id": "a", "status": "created", "rev": "1-a"}
ANSWERS: dict[str, list[dict[str, object]]] = {
    "branch": [ROW_A, {"index": 1, "id": "b", "status": "conflict", "rev": "1-00000000b"}],
    "branchless": [ROW_A, {"index": 1, "id": "b", "status": "conflict", "reason": "Document update conflict."}],
    "upstream": [ROW_A, {"index": 1, "id": "b", "status": "error", "reason": "CouchDB failed"}],
    "short": [ROW_A],
    "no-summary": [ROW_A, {"index": 1, "id": "b", "status": "created", "rev": "1-b"}],
    "stopped": [ROW_A, {"index": 1, "id": "b", "status": "created", "rev": "1-b"},
                {"error": "too_large", "reason": "an NDJSON line is too long"}],
}  # fmt: skip


async def stand_in(request: web.Request) -> web.StreamResponse:
    await request.read()
    case = request.match_info["db"]
    response = web.StreamResponse()
    response.content_type = "application/x-ndjson"
    await response.prepare(request)
    if case == "silent":
        await asyncio.sleep(30)
    rows = ANSWERS[case]
    for row in rows:
        await response.write(orjson.dumps(row) + b"\n")
    if case != "no-summary":
        counts: dict[str, int] = {}
        for row in rows:
            if "status" in row:
                counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
        await response.write(orjson.dumps({"summary": counts, "dry_run": False}) + b"\n")
    await response.write_eof()
    return response


async def test_cli_exit_code_counts_every_doc_not_imported(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_post("/{db}/_couchgate/import", stand_in)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        export = tmp_path / "two.json"
        export.write_bytes(orjson.dumps([{"_id": "a"}, {"_id": "b"}]))
        url = f"http://127.0.0.1:{server.port}"
        expected = {"branch": 0, "branchless": 1, "upstream": 1, "short": 1, "no-summary": 1, "stopped": 1}
        for case, code in expected.items():
            got, out = await run_cli(
                str(export), "--url", url, "--db", case, "--results", str(tmp_path / "r.jsonl")
            )
            assert got == code, (case, out)
        started = time.monotonic()
        got, out = await run_cli(str(export), "--url", url, "--db", "silent", "--timeout", "1",
                                 "--results", str(tmp_path / "r.jsonl"))  # fmt: skip
        assert got == 2 and time.monotonic() - started < 20, out
    finally:
        await server.close()
