"""Run the real PouchDB client in Node (tests/e2e/pouch.js) from the tests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.devserver.backend import NODE_DIR

SCRIPT = Path(__file__).parent / "e2e" / "pouch.js"


async def run_pouch(cmd: dict[str, Any], *, check: bool = True, limit: float = 120) -> dict[str, Any]:
    """Run one pouch.js command; its last stdout line is the JSON result."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), orjson.dumps(cmd).decode(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    lines = out.decode().strip().splitlines()
    assert lines, f"pouch.js printed nothing; stderr: {err.decode()[-2000:]}"
    result: dict[str, Any] = orjson.loads(lines[-1])
    result["exit_code"] = proc.returncode
    if check and proc.returncode != 0:
        pytest.fail(f"pouch.js failed: {result} {err.decode()[-2000:]}")
    return result
