"""The crash-proof audit log: an intent is stored before every write is forwarded, writes
are refused while it cannot be, and `verify` accounts for every write in the database."""

from __future__ import annotations

import asyncio

from audit_support import admin, page
from rich.console import Console

from proxy.audit.cli import run_verify
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT

from support import Gateway, TestUser, assert_couch_error, audited_gateway, eventually, gateway_settings

BLOCK = {"_id": "_design/block", "validate_doc_update": "function () { throw({forbidden: 'closed'}); }"}


async def intents_for(gw: Gateway, backend: PouchServer, doc_id: str) -> list[dict[str, object]]:
    body = await page(gw, backend, f"/_couchgate/audit?action=intent&doc={doc_id}&limit=100")
    return list(body["entries"])


async def verify(gw: Gateway, backend: PouchServer, db: str) -> tuple[int, str]:
    console = Console(record=True, width=200)
    settings = gateway_settings(backend, db, audit_db=gw.settings.audit_db)
    code = await run_verify(settings, console)
    return code, console.export_text()


async def test_every_kind_of_write_is_announced_before_it_is_forwarded(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    async with audited_gateway(backend, db, audit_flush_interval=3600) as gw:
        status, put, _ = await gw.call("PUT", f"/{db}/one", auth=alice, json={"v": 1})
        assert status == 201, put
        # The intent is stored (its own chain, flushed at once); the outcome entry still waits
        # for the writer, whose next flush is an hour away.
        [intent] = await intents_for(gw, backend, "one")
        assert (intent["outcome"], intent["user"], intent["details"]["writes"]) == (
            "unknown",
            "alice",
            [["one", None, None]],
        )  # type: ignore[index]
        status, updated, _ = await gw.call("PUT", f"/{db}/one", auth=alice, json={"v": 2, "_rev": put["rev"]})
        assert status == 201
        assert ["one", None, 2] in [i["details"]["writes"][0] for i in await intents_for(gw, backend, "one")]  # type: ignore[index]
        status, rows, _ = await gw.call(
            "POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": [{"v": 3}, {"_id": "named"}]}
        )
        assert status == 201
        unnamed = rows[0]["id"]  # named by couchgate before the write, so its intent names it
        assert await intents_for(gw, backend, unnamed) and await intents_for(gw, backend, "named")
        status, created, _ = await gw.call("POST", f"/{db}", auth=alice, json={"v": 4})
        assert status == 201 and await intents_for(gw, backend, created["id"])
        status, _, _ = await gw.call("DELETE", f"/{db}/one?rev={updated['rev']}", auth=alice)
        assert status == 200
        assert ["one", None, 3] in [i["details"]["writes"][0] for i in await intents_for(gw, backend, "one")]  # type: ignore[index]
        assert await gw.server.app[AUDIT].flush()  # type: ignore[attr-defined]
        code, report = await verify(gw, backend, db)
        assert code == 0, report
        # Intents stay out of a doc's history and out of the plain listing.
        history = await page(gw, backend, "/_couchgate/audit/docs/named")
        assert [e["action"] for e in history["entries"]] == ["create"]


async def test_writes_are_refused_while_no_intent_can_be_stored(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    async with audited_gateway(backend, db) as gw:
        assert (await gw.call("PUT", f"/{db}/first", auth=alice, json={}))[0] == 201
        assert backend.request("PUT", f"/{gw.settings.audit_db}/_design/block", BLOCK)[0] == 201
        status, body, _ = await gw.call("PUT", f"/{db}/refused", auth=alice, json={})
        assert_couch_error(status, body, 503, "service_unavailable")
        assert backend.request("GET", f"/{db}/refused")[0] == 404  # never forwarded
        assert (await gw.call("GET", f"/{db}/first", auth=alice))[0] == 200  # reads go on
        status, body, _ = await gw.call("GET", "/_couchgate/ready")
        assert_couch_error(status, body, 503, "service_unavailable")
        _, block = backend.request("GET", f"/{gw.settings.audit_db}/_design/block")
        backend.request("DELETE", f"/{gw.settings.audit_db}/_design/block?rev={block['_rev']}")  # type: ignore[index]

        async def ready() -> bool:
            return (await gw.call("GET", "/_couchgate/ready"))[0] == 200

        assert await eventually(ready)
        assert (await gw.call("PUT", f"/{db}/refused", auth=alice, json={}))[0] == 201


async def test_verify_reports_a_write_no_entry_accounts_for(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    async with audited_gateway(backend, db) as gw:
        for i in range(3):
            assert (await gw.call("PUT", f"/{db}/via-{i}", auth=users["alice"].auth, json={}))[0] == 201
        assert await gw.server.app[AUDIT].flush()  # type: ignore[attr-defined]
        code, report = await verify(gw, backend, db)
        assert code == 0, report
        await asyncio.to_thread(backend.request, "PUT", f"/{db}/around", {"v": 1})
        code, report = await verify(gw, backend, db)
        assert code == 1 and f"{db}/around rev 1-" in report, report
        # Docs written before the audit log began are not its to account for.
        status, _, _ = await gw.call("GET", "/_couchgate/audit?action=intent&limit=1", auth=admin(backend))
        assert status == 200
