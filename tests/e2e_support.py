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


class PouchSession:
    """Real PouchDB devices that live across steps (pouch.js `session`): a test pulls,
    changes things upstream, pulls again with the same device."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PouchSession:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), orjson.dumps({"op": "session"}).decode(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,  # one answer line holds a device's docs
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            try:
                await self.call({"cmd": "stop"})
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                self.proc.kill()
                await self.proc.wait()

    async def call(self, cmd: dict[str, Any], limit: float = 120) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit)
        assert line, "pouch.js session ended"
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def device(self, op: str, device: str, user: str, password: str, **extra: Any) -> dict[str, Any]:
        auth = {"basic": [user, password]}
        return await self.call({"cmd": op, "device": device, "url": self.url, "auth": auth, **extra})

    async def docs(self, device: str, *, attachments: bool = False) -> dict[str, dict[str, Any]]:
        answer = await self.call({"cmd": "docs", "device": device, "attachments": attachments})
        return {d["_id"]: d for d in answer["docs"]}
