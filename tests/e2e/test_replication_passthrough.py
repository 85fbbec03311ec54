"""A real PouchDB client replicates both ways through couchgate (basic auth and JWT)."""

from __future__ import annotations

import pytest

from e2e_support import run_pouch
from support import Gateway, TestUser

pytestmark = pytest.mark.e2e


def docs(prefix: str, n: int) -> list[dict[str, object]]:
    return [{"_id": f"{prefix}-{i:03d}", "type": "note", "n": i} for i in range(n)]


async def test_pouchdb_syncs_with_basic_auth(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    await gateway.call("PUT", f"/{db}/server-side", auth=users["alice"].auth, json={"from": "server"})
    result = await run_pouch(
        {
            "op": "sync",
            "url": f"{gateway.url}/{db}",
            "auth": {"basic": ["alice", "alice-pass"]},
            "push": docs("b", 30),
        }
    )
    assert result["push"] == {"ok": True, "docs_written": 30, "errors": 0}, result
    assert result["pull"]["ok"] and result["pull"]["errors"] == 0
    assert result["ids"] == sorted([d["_id"] for d in docs("b", 30)] + ["server-side"])
    assert result["again"]["docs_read"] == 0
    status, body, _ = await gateway.call("GET", f"/{db}/b-007", auth=users["alice"].auth)
    assert status == 200 and body["n"] == 7


async def test_pouchdb_syncs_with_jwt(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    _, body, _ = await gateway.call(
        "POST", "/_couchgate/token", json={"name": "alice", "password": "alice-pass"}
    )
    result = await run_pouch(
        {"op": "sync", "url": f"{gateway.url}/{db}", "auth": {"bearer": body["token"]}, "push": docs("j", 25)}
    )
    assert result["push"] == {"ok": True, "docs_written": 25, "errors": 0}
    assert result["ids"] == [d["_id"] for d in docs("j", 25)]
    assert result["again"]["docs_read"] == 0
    _, all_docs, _ = await gateway.call("GET", f"/{db}/_all_docs", auth=users["alice"].auth)
    assert all_docs["total_rows"] == 25


async def test_pouchdb_with_wrong_password_is_refused(
    gateway: Gateway, db: str, fresh_user: TestUser
) -> None:
    cmd = {
        "op": "sync",
        "url": f"{gateway.url}/{db}",
        "auth": {"basic": [fresh_user.name, "wrong"]},
        "push": docs("x", 1),
    }
    result = await run_pouch(cmd, check=False)
    assert result["exit_code"] == 1 and result["status"] == 401
