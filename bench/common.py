"""Shared benchmark plumbing: a backend, demo data, couchgate as a subprocess, PouchDB runs.

Every benchmark takes `--backend`: `pouchdb-server` (embedded, in memory; the default),
`couchdb[:PORT]` (a fresh Apache CouchDB started with ../shared/couchdb/couchdb.sh and
stopped at the end), or `http://admin:pass@host:port` (a running CouchDB)."""

from __future__ import annotations

import argparse
import asyncio
import json
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

from proxy.devserver.backend import NODE_DIR, PROJECT_ROOT, Backend, CouchServer, backend_from, free_port

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


def get_json(url: str, auth: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": auth, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        return orjson.loads(resp.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="pouchdb-server",
        help="pouchdb-server (embedded, in memory), couchdb[:PORT] (started with ../shared/couchdb/couchdb.sh "
        "and stopped after) or http://admin:pass@host:port (a running CouchDB)",
    )


def open_backend(spec: str) -> Backend:
    """The backend a benchmark runs against (used as a context manager: started, stopped)."""
    return backend_from(spec, heap_mb=12_288)


def describe(backend: Backend) -> str:
    """How the results tables name the backend."""
    if isinstance(backend, CouchServer):
        _, welcome = backend.request("GET", "/")
        version = welcome.get("version", "3.x") if isinstance(welcome, dict) else "3.x"
        return f"Apache CouchDB {version} (single node, n=1, q=2, data on disk)"
    return "in-memory pouchdb-server 4.2.0"


def short_name(backend: Backend) -> str:
    return "CouchDB" if isinstance(backend, CouchServer) else "pouchdb-server"


def backend_flag(spec: str) -> str:
    """The `--backend` part of a benchmark's command line (credentials left out)."""
    if spec.startswith(("http://", "https://")):
        return "--backend http://admin:...@host:port"
    return "" if spec == "pouchdb-server" else f"--backend {spec}"


def wait_ready(url: str, within: float = 600) -> float:
    """Wait until couchgate's `/_couchgate/ready` says 200; the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_couchgate/ready", timeout=5) as resp:
                json.loads(resp.read())
                return time.monotonic() - started
        except OSError:
            if time.monotonic() - started > within:
                raise RuntimeError("couchgate did not become ready") from None
            time.sleep(0.05)


@contextmanager
def couchgate(
    backend: Backend, db: str, command: list[str] | None = None, **env: str
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
        "COUCHGATE_LOG_LEVEL": os.environ.get("COUCHGATE_LOG_LEVEL", "WARNING"),
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


LOAD_AT_START = os.getloadavg()


def load_note() -> str:
    """The machine's load while the benchmark ran: this 2-core machine is shared, and what
    else runs on it moves single timings far more than it moves via/direct ratios."""
    now = os.getloadavg()
    return f"Load average (1 min) at start {LOAD_AT_START[0]:.1f}, at the end {now[0]:.1f}, on 2 cores."


def write_section(title: str, body: str) -> None:
    """Replace (or append) one `## title` section of docs/benchmarks.md, with the load note."""
    body = body.rstrip() + "\n\n" + load_note()
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
