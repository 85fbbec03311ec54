"""Issue 11, item 5: `couchgate dev` supervises its backend.

The backend process is killed from outside; couchgate's port keeps answering (503 on
`/_couchgate/ready` meanwhile), the backend comes back with its data (the demo data
reloaded when in memory; the data kept when on disk), with a log line each way.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from proxy.devserver.backend import free_port

from support import basic

DEADLINE = 90.0
ADMIN = basic("administrator", "administrator-pass")


def call(port: int, method: str, path: str, body: object = None, auth: str = ADMIN) -> tuple[int, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": auth, "Accept": "application/json", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read() or b"null")


def ready(port: int) -> int | str:
    try:
        return call(port, "GET", "/_couchgate/ready")[0]
    except OSError as exc:
        return type(exc).__name__  # nothing answered at all: how it failed (in the assertion)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def backend_pids(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"pid (\d+)", log.read_text())]


@pytest.mark.parametrize("on_disk", [False, True], ids=["in memory", "on disk"])
def test_dev_restarts_a_killed_backend(tmp_path: Path, on_disk: bool) -> None:
    port, backend_port = free_port(), free_port()
    log = tmp_path / "dev.log"
    cmd = [sys.executable, "-m", "proxy", "dev", "--preset", "tiny", "--port", str(port),
           "--backend-port", str(backend_port), "--backend-dir", str(tmp_path / "backend"),
           *(["--on-disk"] if on_disk else [])]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        wait_for(lambda: proc.poll() is not None or ready(port) == 200, "couchgate dev to be ready")
        assert proc.poll() is None, log.read_text()
        first = backend_pids(log)[0]
        assert call(port, "PUT", "/medic/written-before", {"mine": True})[0] == 201
        os.kill(first, signal.SIGKILL)
        seen: list[int | str] = []

        def back() -> bool:
            seen.append(ready(port))
            return seen[-1] == 200 and 503 in seen

        wait_for(back, "the backend to come back")
        assert all(isinstance(status, int) for status in seen), seen  # the port answered all along
        text = log.read_text()
        assert re.search(rf"the backend \(pid {first}\) exited with -9: restarting it", text), text
        assert "the backend is back on" in text, text
        assert backend_pids(log)[-1] != first
        status, rows = call(port, "GET", "/medic/_all_docs", auth=basic("chw3", "chw3-pass"))
        assert status == 200 and "d0-hc0-a2" in str(rows)
        status, _ = call(port, "GET", "/medic/written-before")
        assert status == (200 if on_disk else 404)  # kept on disk; in memory, the demo data only
        assert call(port, "GET", "/_all_dbs")[0] == 200  # the demo admin is an admin again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert not listening(port) and not listening(backend_port)
