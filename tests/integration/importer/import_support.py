"""Helpers for the import tests: calling `/import` and couchgate as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from proxy.devserver.backend import PouchServer, free_port

from support import Gateway


async def do_import(
    gw: Gateway, path: str, auth: str, payload: Any, query: str = "", ndjson: bool = False
) -> dict[str, Any]:
    """One import that must be understood (200); NDJSON answers come back in JSON's shape."""
    if isinstance(payload, bytes):
        data, headers = payload, {"Content-Type": "application/json"}
    elif ndjson:
        data = b"".join(orjson.dumps(d) + b"\n" for d in payload)
        headers = {"Content-Type": "application/x-ndjson"}
    else:
        data, headers = orjson.dumps(payload), {"Content-Type": "application/json"}
    status, body, _resp_headers = await gw.call(
        "POST", f"{path}{query}", auth=auth, data=data, headers=headers
    )
    assert status == 200, body
    if ndjson:
        lines = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        assert "summary" in lines[-1], lines[-3:]
        return {"results": lines[:-1], "summary": lines[-1]["summary"]}
    return dict(body)


def statuses(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in answer["results"]]


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@asynccontextmanager
async def couchgate_process(
    backend: PouchServer, db: str, **env: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`python -m proxy serve` against the test backend; stopped on exit."""
    port = free_port()
    environ = {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
               "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_DB": db,
               "COUCHGATE_PORT": str(port), **env}  # fmt: skip
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", env=environ, stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"{url}/_couchgate/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.returncode is None, "couchgate did not start"
                await asyncio.sleep(0.1)
        yield url, server
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 30)
            except TimeoutError:
                server.kill()
                await server.wait()
