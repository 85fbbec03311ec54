"""couchgate under a small open-file limit (a real process): the soft limit is raised to the
hard one, clients past the connection cap get 503 with Retry-After at once instead of
exhausting file descriptors, and a failing accept() is logged a few times, not in a storm."""

from __future__ import annotations

import asyncio
import resource
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from proxy.devserver.backend import PouchServer

from processes import couchgate_process
from support import eventually


def limit_open_files(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@asynccontextmanager
async def couchgate(
    backend: PouchServer, db: str, log: Path, soft: int, hard: int, **env: str
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    with log.open("wb") as err:
        async with couchgate_process(backend, db, stderr=err, preexec_fn=limit_open_files(soft, hard),
                                     COUCHGATE_AUDIT_ENABLED="false", **env) as (url, server):  # fmt: skip
            yield int(url.rsplit(":", 1)[1]), server


def text(path: Path) -> str:
    return path.read_text()


def first_bytes(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(4096)
    except OSError:
        return b""


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def test_connections_past_the_cap_get_503_and_the_server_stays_whole(
    backend: PouchServer, db: str, tmp_path: Path
) -> None:
    log = tmp_path / "couchgate.log"
    # 300 files: the cap is (300 - 20 pooled upstream - 128 reserved) // 2 = 76 clients.
    async with couchgate(backend, db, log, 200, 300, COUCHGATE_UPSTREAM_POOL_SIZE="20") as (port, server):
        limits = text(Path(f"/proc/{server.pid}/limits"))
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["300", "300"]
                   for line in limits.splitlines()), limits  # fmt: skip
        idle = []
        try:
            for _ in range(100):
                idle.append(socket.create_connection(("127.0.0.1", port)))
            late = socket.create_connection(("127.0.0.1", port))
            late.sendall(b"GET /_couchgate/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.to_thread(first_bytes, late)
            late.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in answer, answer
            assert b'"error":"service_unavailable"' in answer
        finally:
            for sock in idle:
                sock.close()

        async def served() -> bool:
            return await asyncio.to_thread(get, port, "/_couchgate/ready") == 200

        assert await eventually(served, within=30)  # CouchDB was reachable all along
    assert "out of system resource" not in text(log)


async def test_accept_failures_are_logged_a_few_times_not_in_a_storm(
    backend: PouchServer, db: str, tmp_path: Path
) -> None:
    """A cap set past the limit: accept() fails with EMFILE, and says so a handful of times."""
    log = tmp_path / "couchgate.log"
    async with couchgate(backend, db, log, 64, 64, COUCHGATE_MAX_CONNECTIONS="1000",
                         COUCHGATE_UPSTREAM_POOL_SIZE="4") as (port, _server):  # fmt: skip
        idle = []
        try:
            for _ in range(150):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            await asyncio.sleep(3)  # let accept() fail and retry for a while (what is measured)
        finally:
            for sock in idle:
                sock.close()

        async def served() -> bool:
            return await asyncio.to_thread(get, port, "/_couchgate/health") == 200

        assert await eventually(served, within=30)
    lines = [line for line in text(log).splitlines() if "out of system resource" in line]
    assert 1 <= len(lines) <= 3, len(lines)
