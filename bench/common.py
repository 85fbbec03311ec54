"""Shared benchmark plumbing: a backend, demo data, couchgate as a subprocess, PouchDB runs."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from proxy.devserver.backend import NODE_DIR, PROJECT_ROOT, PouchServer, free_port

POUCH_JS = PROJECT_ROOT / "tests" / "e2e" / "pouch.js"
RESULTS = PROJECT_ROOT / "docs" / "benchmarks.md"


def run_pouch(cmd: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    out = subprocess.run(
        ["node", str(POUCH_JS), orjson.dumps(cmd).decode()],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
    )  # fmt: skip
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    if out.returncode != 0:
        raise RuntimeError(f"pouch.js failed: {result} {out.stderr[-2000:]}")
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def couchgate(
    backend: PouchServer, db: str, command: list[str] | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """couchgate as a subprocess (`command`: another entry point than `couchgate serve`)."""
    port = free_port()
    environ = {
        **os.environ,
        "COUCHGATE_COUCH_URL": backend.url,
        "COUCHGATE_COUCH_USER": backend.admin_user,
        "COUCHGATE_COUCH_PASSWORD": backend.admin_password,
        "COUCHGATE_DB": db,
        "COUCHGATE_PORT": str(port),
        "COUCHGATE_LOG_LEVEL": "WARNING",
        **env,
    }
    command = command or [sys.executable, "-m", "proxy", "serve"]
    proc = subprocess.Popen(command, env=environ, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_couchgate/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("couchgate did not start") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def write_section(title: str, body: str) -> None:
    """Replace (or append) one `## title` section of docs/benchmarks.md."""
    RESULTS.parent.mkdir(exist_ok=True)
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmarks\n\nEach section says how it was produced.\n"
    )
    head = f"## {title}\n"
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + head + body.rstrip() + "\n" + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + head + body.rstrip() + "\n"
    RESULTS.write_text(text)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
