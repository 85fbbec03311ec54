"""Two real PouchDB devices edit the same doc offline and sync: the conflict is found,
shown by the CLI, and merged by couchgate."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from proxy.devserver.backend import PouchServer

from e2e_support import run_pouch
from support import Gateway, basic

pytestmark = pytest.mark.e2e


async def cli(gateway: Gateway, backend: PouchServer, db: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "conflicts", "--url", gateway.url, "--user", backend.admin_user,
        "--password", backend.admin_password, "--db", db, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_offline_edits_conflict_then_merge(gateway: Gateway, backend: PouchServer, db: str) -> None:
    admin = basic(backend.admin_user, backend.admin_password)
    await gateway.call(
        "PUT", f"/{db}/visit", auth=admin, json={"type": "data_record", "read": ["admin"], "v": 1}
    )
    result = await run_pouch(
        {
            "op": "conflict",
            "url": f"{gateway.url}/{db}",
            "auth": {"basic": [backend.admin_user, backend.admin_password]},
            "id": "visit",
        }
    )
    assert result["pushes"] == [1, 1]
    _status, listed, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts", auth=admin)
    assert [(c["id"], c["classification"]) for c in listed["conflicts"]] == [("visit", "concurrent_edit")]
    code, out = await cli(gateway, backend, db, "list")
    assert code == 0 and "visit" in out and "concurrent_edit" in out
    code, out = await cli(gateway, backend, db, "show", "visit")
    assert code == 0 and "read" in out and "device_a_user" in out and "v" in out
    code, out = await cli(gateway, backend, db, "resolve", "visit", "--strategy", "auto")
    assert code == 0, out
    _, doc = backend.request("GET", f"/{db}/visit?conflicts=true")
    assert "_conflicts" not in doc and doc["v"] == 2 and doc["read"] == ["admin", "device_a_user"]
