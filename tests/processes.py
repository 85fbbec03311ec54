"""couchgate as a real process (`python -m proxy serve`), for the tests that must kill it,
limit its open files, or run it as deployed."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import IO

from proxy.devserver.backend import PouchServer, free_port


@asynccontextmanager
async def couchgate_process(
    backend: PouchServer, db: str, *, stderr: IO[bytes] | int = asyncio.subprocess.DEVNULL,
    preexec_fn: Callable[[], None] | None = None, **env: str,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:  # fmt: skip
    """`python -m proxy serve` against the test backend, once it answers; stopped on exit."""
    port = free_port()
    environ = {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
               "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_DB": db,
               "COUCHGATE_PORT": str(port), **env}  # fmt: skip
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", env=environ, stderr=stderr, preexec_fn=preexec_fn
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
