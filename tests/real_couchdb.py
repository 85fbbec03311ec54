"""A real Apache CouchDB 3.4.3 for the tests that must see both backends answer
(shared/couchdb/couchdb.sh, beside the project); skipped where it is not available."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.devserver.backend import stop_epmd_of

SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "couchdb" / "couchdb.sh"
PORT = int(os.environ.get("COUCHGATE_TEST_COUCHDB_PORT", "6021"))


@dataclass
class RealCouch:
    """The same small interface as PouchServer: url, admin credentials, request()."""

    url: str
    admin_user: str = "admin"
    admin_password: str = "pass"

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Basic {token}", "Content-Type": "application/json", "Accept": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@contextmanager
def real_couchdb() -> Iterator[RealCouch]:
    if not SCRIPT.exists():
        pytest.skip(f"no real CouchDB here ({SCRIPT})")
    where = tempfile.mkdtemp(prefix="couchgate-couchdb-")
    try:
        subprocess.run(
            ["bash", str(SCRIPT), "start", str(PORT), where], check=True, capture_output=True, timeout=180
        )
        yield RealCouch(f"http://127.0.0.1:{PORT}")
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(PORT), where], capture_output=True, timeout=120)
        stop_epmd_of(where)
        shutil.rmtree(where, ignore_errors=True)
