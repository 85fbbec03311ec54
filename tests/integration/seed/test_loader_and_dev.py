"""Loading the demo data set into the real backend, and `couchgate dev` starting and stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import aiohttp
import pytest

from proxy.devserver.backend import PouchServer, free_port
from proxy.seed.generator import preset
from proxy.seed.loader import SECURITY, load

from support import basic

# Both start an embedded pouchdb-server of their own (the demo users would collide with the
# other tests' users in a shared backend, and `couchgate dev` embeds pouchdb-server).
pytestmark = pytest.mark.backend("pouchdb-server", reason="runs on a pouchdb-server of its own")


async def test_load_is_complete_and_idempotent() -> None:
    # A backend of its own: the demo users must not collide with other tests' users.
    backend = PouchServer().start()
    db = f"demo-{uuid.uuid4().hex[:8]}"
    data = preset("tiny", seed=3)
    expected = sum(1 for _ in data.docs())
    try:
        report = await load(backend.url, backend.admin_user, backend.admin_password, db, data)
        assert report.docs_written == expected
        _, info = backend.request("GET", f"/{db}")
        assert info["doc_count"] == expected
        assert backend.request("GET", f"/{db}/_security")[1] == SECURITY
        again = await load(backend.url, backend.admin_user, backend.admin_password, db, data)
        assert again.docs_written == 0 and again.docs_existing == expected
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{backend.url}/_session", headers={"Authorization": basic("chw3", "chw3-pass")}
            ) as resp,
        ):
            assert b'"chw3"' in await resp.read()
        # The demo admin is an admin as couchgate sees it: CouchDB gives it `_admin`.
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{backend.url}/_session",
                headers={
                    "Authorization": basic("administrator", "administrator-pass"),
                    "Accept": "application/json",
                },
            ) as resp,
        ):
            assert "_admin" in (await resp.json())["userCtx"]["roles"]
        assert backend.request("GET", f"/{db}/org.couchdb.user:administrator")[1]["type"] == "user-settings"
    finally:
        backend.stop()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_couchgate_dev_serves_demo_data_and_ctrl_c_stops_everything() -> None:
    port, backend_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "dev", "--preset", "tiny", "--port", str(port), "--backend-port", str(backend_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not listening(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/medic/_all_docs", headers={"Authorization": basic("chw3", "chw3-pass")}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200 and b"d0-hc0-a2" in resp.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "chw1 / chw1-pass" in out and f"http://127.0.0.1:{port}" in out
    assert "administrator / administrator-pass" in out
    assert not listening(port) and not listening(backend_port)
