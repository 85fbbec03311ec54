"""GET /_couchgate/audit/verify: the chain check of `couchgate audit verify`, over HTTP."""

from __future__ import annotations

from typing import Any

from ops_support import admin, admin_get

from proxy.devserver.backend import PouchServer

from support import assert_couch_error, audited_gateway


async def test_intact_then_an_edited_entry_is_a_break(backend: PouchServer, db: str) -> None:
    async with audited_gateway(backend, db) as gw:
        for i in range(3):
            assert (await gw.call("PUT", f"/{db}/d{i}", auth=admin(backend), json={"v": i}))[0] == 201
        report = await admin_get(gw, backend, "/_couchgate/audit/verify")
        assert report["intact"] is True and report["breaks"] == [] and report["breaks_total"] == 0
        assert report["entries"] >= 3 and report["writers"] == 1
        audit_db = gw.settings.audit_db
        status, listing = backend.request("GET", f"/{audit_db}/_all_docs?include_docs=true")
        assert status == 200
        batch: dict[str, Any] = next(
            r["doc"] for r in listing["rows"] if r["doc"].get("type") == "couchgate-audit-batch"
        )
        batch["entries"][0]["user"] = "someone-else"
        assert backend.request("PUT", f"/{audit_db}/{batch['_id']}", batch)[0] == 201
        broken = await admin_get(gw, backend, "/_couchgate/audit/verify")
        assert broken["intact"] is False
        assert {"writer": batch["writer"], "seq": batch["entries"][0]["seq"], "problem": "edited"} in broken[
            "breaks"
        ]


async def test_a_checkpoint_past_the_end_is_truncation(backend: PouchServer, db: str) -> None:
    async with audited_gateway(backend, db) as gw:
        assert (await gw.call("PUT", f"/{db}/d", auth=admin(backend), json={"v": 1}))[0] == 201
        first = await admin_get(gw, backend, "/_couchgate/audit/verify")
        assert first["intact"] is True
        writer = (await admin_get(gw, backend, "/_couchgate/audit?limit=1"))["entries"][0]["writer"]
        report = await admin_get(gw, backend, f"/_couchgate/audit/verify?checkpoint={writer}:999:abc")
        assert report["intact"] is False and report["breaks"][-1]["problem"] == "truncated"


async def test_admins_only_and_checkpoints_checked(backend: PouchServer, db: str, users: Any) -> None:
    async with audited_gateway(backend, db) as gw:
        status, body, _ = await gw.call("GET", "/_couchgate/audit/verify", auth=users["alice"].auth)
        assert_couch_error(status, body, 403, "forbidden")
        status, body, _ = await gw.call(
            "GET", "/_couchgate/audit/verify?checkpoint=nonsense", auth=admin(backend)
        )
        assert_couch_error(status, body, 400, "bad_request")
