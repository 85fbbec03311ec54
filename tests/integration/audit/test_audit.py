"""The audit log against the real backend: what is recorded, how it is read, and that it
survives the audit database refusing writes and couchgate stopping."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.audit.api import AuditEntry
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT

from offline_data import auth as offline_auth
from offline_data import report
from support import (
    Gateway,
    TestUser,
    assert_couch_error,
    basic,
    eventually,
    gateway_settings,
    start_gateway,
    stop_gateway,
)


def audit_settings(backend: PouchServer, db: str, **extra: Any) -> Any:
    values = {"audit_db": f"audit-{uuid.uuid4().hex[:10]}", "audit_flush_interval": 0.05, **extra}
    return gateway_settings(backend, db, **values)


@pytest.fixture
async def agw(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(audit_settings(backend, db))
    yield gw
    await stop_gateway(gw)
    backend.request("DELETE", f"/{gw.settings.audit_db}")


def admin(backend: PouchServer) -> str:
    return basic(backend.admin_user, backend.admin_password)


async def entries(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    status, body, _ = await gw.call("GET", f"/_couchgate/audit?limit=1000{query}", auth=admin(backend))
    assert status == 200, body
    return list(body["entries"])


def stored(backend: PouchServer, audit_db: str) -> list[dict[str, Any]]:
    _, body = backend.request("GET", f"/{audit_db}/_all_docs?include_docs=true")
    return [r["doc"] for r in body["rows"] if r["doc"].get("type") == "couchgate-audit"]


async def test_each_write_is_one_entry(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    _, created, _ = await agw.call("PUT", f"/{db}/doc1", auth=alice, json={"type": "person"})
    _, updated, _ = await agw.call(
        "PUT", f"/{db}/doc1", auth=alice, json={"type": "person", "_rev": created["rev"]}
    )
    _, attached, _ = await agw.call("PUT", f"/{db}/doc1/a.txt?rev={updated['rev']}", auth=alice, data=b"hi",
                                    headers={"Content-Type": "text/plain"})  # fmt: skip
    _, deleted, _ = await agw.call("DELETE", f"/{db}/doc1?rev={attached['rev']}", auth=alice)
    _, posted, _ = await agw.call("POST", f"/{db}", auth=alice, json={"type": "clinic"})
    history = {e["action"]: e for e in await entries(agw, backend, "&doc=doc1")}
    assert set(history) == {"create", "update", "attachment", "delete"}
    assert history["create"]["rev_after"] == created["rev"] and history["create"]["rev_before"] is None
    assert (history["update"]["rev_before"], history["update"]["rev_after"]) == (
        created["rev"],
        updated["rev"],
    )
    assert history["delete"]["rev_after"] == deleted["rev"] and history["delete"]["outcome"] == "written"
    assert all(e["user"] == "alice" and e["db"] == db and e["request_id"] for e in history.values())
    assert history["create"]["doc_type"] == "person" and history["create"]["roles"] == ["member"]
    assert [e["action"] for e in await entries(agw, backend, f"&doc={posted['id']}")] == ["create"]


async def test_bulk_docs_one_entry_per_doc(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    await agw.call("PUT", f"/{db}/taken", auth=alice, json={})
    docs = [{"_id": "b1"}, {"_id": "b2"}, {"_id": "taken"}]
    status, rows, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs})
    assert status == 201
    got = {
        e["doc_id"]: e
        for e in await entries(agw, backend, "&action=create")
        if e["doc_id"] in {"b1", "b2", "taken"}
    }
    assert got["b1"]["outcome"] == "written" and got["b1"]["rev_after"] == next(
        r["rev"] for r in rows if r["id"] == "b1"
    )
    assert [e["outcome"] for e in await entries(agw, backend, "&doc=taken")] == ["conflict", "written"]
    status, _, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice,
                                  json={"docs": [{"_id": "rep", "_rev": "3-abc"}], "new_edits": False})  # fmt: skip
    assert status == 201
    [replicated] = await entries(agw, backend, "&doc=rep")
    assert (replicated["action"], replicated["rev_after"], replicated["outcome"]) == (
        "replicate",
        "3-abc",
        "written",
    )


async def test_security_events(agw: Gateway, backend: PouchServer, users: dict[str, TestUser]) -> None:
    await agw.call("POST", "/_session", json={"name": "alice", "password": "alice-pass"})
    await agw.call("POST", "/_session", json={"name": "alice", "password": "wrong"})
    await agw.call("POST", "/_couchgate/token", json={"name": "alice", "password": "alice-pass"})
    await agw.call("POST", "/_couchgate/token", json={"name": "mallory", "password": "nope"})
    await agw.call("GET", "/_all_dbs", auth=basic("alice", "not-her-password"))
    logins = await entries(agw, backend, "&action=login")
    assert [(e["user"], e["outcome"]) for e in logins] == [("alice", "failure"), ("alice", "success")]
    tokens = await entries(agw, backend, "&action=token")
    assert [(e["user"], e["outcome"]) for e in tokens] == [("mallory", "failure"), ("alice", "success")]
    [failure] = await entries(agw, backend, "&action=authenticate")
    assert failure["outcome"] == "failure" and failure["path"] == "/_all_dbs"
    stored_text = str(stored(backend, agw.settings.audit_db))
    assert "alice-pass" not in stored_text and "not-her-password" not in stored_text


async def test_denied_requests_and_forbidden_docs(backend: PouchServer, medic: str) -> None:
    gw = await start_gateway(audit_settings(backend, medic))
    try:
        await gw.call("GET", "/_all_dbs", auth=offline_auth("chw1"))
        await gw.call("POST", f"/{medic}/_bulk_docs", auth=offline_auth("chw1"),
                      json={"docs": [report("r_no", ("chw1_person",), patient_uuid="p9")]})  # fmt: skip
        await gw.call("PUT", f"/{medic}/p9", auth=offline_auth("chw1"), json={"type": "person"})
        [denied] = await entries(gw, backend, "&outcome=denied")
        assert (denied["user"], denied["path"], denied["action"]) == ("chw1", "/_all_dbs", "request")
        forbidden = await entries(gw, backend, "&outcome=forbidden")
        assert {(e["doc_id"], e["action"]) for e in forbidden} == {("r_no", "create"), ("p9", "update")}
        assert all(e["reason"] for e in forbidden)
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{gw.settings.audit_db}")


async def test_filters_paging_and_a_docs_history(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    rev = (await agw.call("PUT", f"/{db}/patient", auth=alice, json={"v": 0}))[1]["rev"]
    for v in (1, 2):
        rev = (await agw.call("PUT", f"/{db}/patient", auth=alice, json={"v": v, "_rev": rev}))[1]["rev"]
    agw.server.app[AUDIT].record(
        AuditEntry(action="resolve", outcome="written", user="admin", db=db, doc_id="patient")
    )
    await agw.call("DELETE", f"/{db}/patient?rev={rev}", auth=alice)
    history = (await agw.call("GET", "/_couchgate/audit/docs/patient", auth=admin(backend)))[1]["entries"]
    assert [e["action"] for e in history] == ["delete", "resolve", "update", "update", "create"]
    pages, url = [], "/_couchgate/audit/docs/patient?limit=2"
    while url:
        body = (await agw.call("GET", url, auth=admin(backend)))[1]
        pages.append([e["action"] for e in body["entries"]])
        url = f"/_couchgate/audit/docs/patient?limit=2&next={body['next']}" if body["next"] else ""
    assert pages == [["delete", "resolve"], ["update", "update"], ["create"]]
    assert [e["doc_id"] for e in await entries(agw, backend, "&user=alice&action=update")] == [
        "patient",
        "patient",
    ]
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert await entries(agw, backend, f"&since={later}") == []
    status, body, _ = await agw.call("GET", "/_couchgate/audit", auth=alice)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await agw.call("GET", "/_couchgate/audit?since=yesterday", auth=admin(backend))
    assert_couch_error(status, body, 400, "bad_request")


async def test_offline_users_read_history_of_docs_they_can_read(backend: PouchServer, medic: str) -> None:
    gw = await start_gateway(audit_settings(backend, medic))
    try:
        await gw.call(
            "PUT",
            f"/{medic}/r_mine",
            auth=offline_auth("chw1"),
            json=report("x", ("chw1_person",), patient_id="1001"),
        )
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/r_mine", auth=offline_auth("chw1"))
        assert status == 200 and [e["action"] for e in body["entries"]] == ["create"]
        status, body, _ = await gw.call("GET", "/_couchgate/audit/docs/r_mine", auth=offline_auth("chw2"))
        assert_couch_error(status, body, 404, "not_found")
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{gw.settings.audit_db}")


BLOCK = {
    "_id": "_design/block",
    "validate_doc_update": "function () { throw({forbidden: 'audit db closed'}); }",
}


async def test_unwritable_audit_db_queues_entries_and_readiness_says_so(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    audit_db = agw.settings.audit_db
    await agw.call("PUT", f"/{db}/first", auth=users["alice"].auth, json={})
    await entries(agw, backend)  # flushed, so the database exists
    assert backend.request("PUT", f"/{audit_db}/_design/block", BLOCK)[0] == 201
    for i in range(5):
        await agw.call("PUT", f"/{db}/while-down-{i}", auth=users["alice"].auth, json={})

    async def not_ready() -> bool:
        return (await agw.call("GET", "/_couchgate/ready"))[0] == 503

    async def ready() -> bool:
        return (await agw.call("GET", "/_couchgate/ready"))[0] == 200

    assert await eventually(not_ready)
    status, body, _ = await agw.call("GET", "/_couchgate/ready")
    assert_couch_error(status, body, 503, "service_unavailable")
    assert body["checks"]["audit"]["queued"] == 5 and "audit" in body["reason"]
    _, block = backend.request("GET", f"/{audit_db}/_design/block")
    backend.request("DELETE", f"/{audit_db}/_design/block?rev={block['_rev']}")
    assert await eventually(ready)
    ids = {e["doc_id"] for e in stored(backend, audit_db)}
    assert {f"while-down-{i}" for i in range(5)} <= ids


async def test_stopping_couchgate_flushes_pending_entries(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    gw = await start_gateway(audit_settings(backend, db, audit_flush_interval=3600, audit_batch_size=10_000))
    for i in range(20):
        await gw.call("PUT", f"/{db}/pending-{i}", auth=users["alice"].auth, json={})
    assert len(gw.server.app[AUDIT].queue) == 20  # type: ignore[attr-defined]
    await stop_gateway(gw)
    try:
        assert {e["doc_id"] for e in stored(backend, gw.settings.audit_db)} == {
            f"pending-{i}" for i in range(20)
        }
    finally:
        backend.request("DELETE", f"/{gw.settings.audit_db}")


def cli_env(backend: PouchServer, audit_db: str) -> dict[str, str]:
    """The environment `couchgate audit ...` reads its settings from."""
    return {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
            "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_AUDIT_DB": audit_db, "COLUMNS": "200"}  # fmt: skip


def verify_cli(backend: PouchServer, audit_db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify"],
        env=cli_env(backend, audit_db),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_verify_finds_edited_and_deleted_entries(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    for i in range(4):
        await agw.call("PUT", f"/{db}/chained-{i}", auth=users["alice"].auth, json={})
    await entries(agw, backend)
    audit_db = agw.settings.audit_db
    result = await asyncio.to_thread(verify_cli, backend, audit_db)
    assert result.returncode == 0 and "intact" in result.stdout, result.stdout + result.stderr
    chain = sorted(stored(backend, audit_db), key=lambda e: e["seq"])
    edited = {**chain[1], "user": "someone-else"}
    backend.request("PUT", f"/{audit_db}/{edited['_id']}", edited)
    result = await asyncio.to_thread(verify_cli, backend, audit_db)
    assert result.returncode == 1 and f"seq {chain[1]['seq']}: edited" in result.stdout, result.stdout
    backend.request("DELETE", f"/{audit_db}/{chain[2]['_id']}?rev={chain[2]['_rev']}")
    result = await asyncio.to_thread(verify_cli, backend, audit_db)
    assert result.returncode == 1 and f"seq {chain[2]['seq']}: missing" in result.stdout, result.stdout


def test_tail_cli_prints_newest_entries(backend: PouchServer) -> None:
    audit_db = f"audit-{uuid.uuid4().hex[:8]}"
    env = cli_env(backend, audit_db)
    asyncio.run(_seed_audit(backend, audit_db))
    try:
        out = subprocess.run([sys.executable, "-m", "proxy", "audit", "tail", "--doc", "tail-doc"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "tail-doc" in out.stdout and "create" in out.stdout and "bob" in out.stdout
    finally:
        backend.request("DELETE", f"/{audit_db}")


async def _seed_audit(backend: PouchServer, audit_db: str) -> None:
    gw = await start_gateway(audit_settings(backend, "unused", audit_db=audit_db))
    gw.server.app[AUDIT].record(AuditEntry(action="create", outcome="written", user="bob", doc_id="tail-doc"))
    await stop_gateway(gw)


def test_base64_helper_is_not_leaking_secrets() -> None:
    assert base64.b64decode(basic("a", "b").split()[1]) == b"a:b"


async def test_retention_removes_old_entries_and_verify_still_holds(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    from proxy.audit.chain import verify
    from proxy.audit.cli import all_entries
    from proxy.audit.retention import Retention
    from proxy.keys import COUCH

    for i in range(6):
        await agw.call("PUT", f"/{db}/old-{i}", auth=users["alice"].auth, json={})
    await entries(agw, backend)
    log = agw.server.app[AUDIT]
    cut = sorted(stored(backend, agw.settings.audit_db), key=lambda e: e["seq"])[3]["ts"]
    removed = await Retention(log, days=1).apply(now_ms=cut + 86_400_000 - 1)  # type: ignore[arg-type]
    remaining, markers = await all_entries(agw.server.app[COUCH], agw.settings.audit_db)
    assert removed >= 3 and len(remaining) == 6 - removed
    assert verify(remaining, markers) == []
    assert verify(remaining) != []  # without the marker the cut would look like tampering


async def test_unsized_bulk_docs_stream_through_and_are_recorded_from_the_answer(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    import orjson

    payload = orjson.dumps({"docs": [{"_id": "s1"}, {"_id": "s2"}]})

    async def chunked():  # no Content-Length: couchgate cannot know the size in advance
        yield payload[:10]
        yield payload[10:]

    async with agw.http.post(f"{agw.url}/{db}/_bulk_docs", data=chunked(),
                             headers={"Authorization": users["alice"].auth, "Content-Type": "application/json",
                                      "Accept": "application/json"}) as resp:  # fmt: skip
        assert resp.status == 201
        rows = orjson.loads(await resp.read())
    recorded = {e["doc_id"]: e for e in await entries(agw, backend, "&action=bulk_docs")}
    assert set(recorded) == {"s1", "s2"}
    assert recorded["s1"]["rev_after"] == next(r["rev"] for r in rows if r["id"] == "s1")


async def test_writes_are_recorded_even_when_the_client_does_not_wait_for_the_answer(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    import orjson

    headers = {
        "Authorization": users["alice"].auth,
        "Content-Type": "application/json",
        "Accept-Encoding": "gzip",
    }
    for n in range(10):
        batch = orjson.dumps({"docs": [{"_id": f"hasty-{n}-{i}"} for i in range(20)]})
        async with agw.http.post(f"{agw.url}/{db}/_bulk_docs", data=batch, headers=headers) as resp:
            assert resp.status == 201  # and leave without reading the body
    _, info = backend.request("GET", f"/{db}")
    assert info["doc_count"] == 200

    async def all_recorded() -> bool:
        return len([e for e in await entries(agw, backend) if str(e["doc_id"]).startswith("hasty-")]) == 200

    assert await eventually(all_recorded)
