"""Issue 11, item 8: the audit history of a doc shows non-admins who changed what and when,
never other users' client details (address, user agent, request) nor refused attempts."""

from __future__ import annotations

from typing import Any

from proxy.devserver.backend import PouchServer

from offline_data import auth as offline_auth
from support import audited_gateway, basic

CLIENT_DETAILS = {"client", "user_agent", "request_id", "path", "reason", "details", "roles"}


async def history(gw: Any, doc_id: str, auth: str) -> list[dict[str, Any]]:
    status, body, _ = await gw.call("GET", f"/_couchgate/audit/docs/{doc_id}", auth=auth)
    assert status == 200, body
    return list(body["entries"])


async def test_offline_reader_sees_changes_without_client_details(backend: PouchServer, medic: str) -> None:
    async with audited_gateway(backend, medic) as gw:
        stored = backend.request("GET", f"/{medic}/p1")[1]
        assert isinstance(stored, dict)
        agent = {"User-Agent": "SupervisorPhone/1.0 (serial 12345)"}
        status, body, _ = await gw.call(
            "PUT",
            f"/{medic}/p1",
            auth=offline_auth("supervisor"),
            json={**stored, "note": "seen"},
            headers=agent,
        )
        assert status == 201, body
        # chw2's attempt on a doc outside their scope is refused, and recorded.
        status, body, _ = await gw.call(
            "PUT", f"/{medic}/p1", auth=offline_auth("chw2"), json={**stored, "x": 1}
        )
        assert status == 403, body
        admin = basic(backend.admin_user, backend.admin_password)
        full = await history(gw, "p1", admin)
        assert {e["outcome"] for e in full} >= {"written", "forbidden"}, full
        assert any(e.get("user_agent") == agent["User-Agent"] for e in full)
        seen = await history(gw, "p1", offline_auth("chw1"))
        assert [(e["user"], e["action"], e["outcome"]) for e in seen] == [("supervisor", "update", "written")]
        assert seen[0]["rev_after"].startswith("2-") and seen[0]["time"]
        for entry in seen:
            assert not CLIENT_DETAILS & set(entry), entry
        # Asking for the refusals by filter finds none either.
        status, body, _ = await gw.call(
            "GET", "/_couchgate/audit/docs/p1?outcome=forbidden", auth=offline_auth("chw1")
        )
        assert status == 200 and all(e["outcome"] == "written" for e in body["entries"]), body


async def test_online_reader_too(backend: PouchServer, db: str) -> None:
    async with audited_gateway(backend, db) as gw:
        alice = basic("alice", "alice-pass")
        status, body, _ = await gw.call(
            "PUT", f"/{db}/shared", auth=alice, json={}, headers={"User-Agent": "A/1"}
        )
        assert status == 201, body
        status, _, _ = await gw.call("PUT", f"/{db}/shared", auth=basic("mallory", "mallory-pass"), json={})
        assert status in (401, 403)
        seen = await history(gw, "shared", alice)
        assert [(e["user"], e["outcome"]) for e in seen] == [("alice", "written")]
        assert not CLIENT_DETAILS & set(seen[0]), seen[0]
