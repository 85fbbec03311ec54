"""/_couchgate/metrics: requests by route class, method, status class and caller kind;
upstream; the index follower; offline sync; import; audit; auth."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace
from typing import Any

from ops_support import Scrape, admin, scrape

from proxy.audit.api import AuditEntry
from proxy.audit.log import AuditLog
from proxy.couch.client import CouchClient, new_session
from proxy.devserver.backend import PouchServer
from proxy.keys import COUCH
from proxy.metrics import index_lag

from offline_data import auth, lineage
from support import (
    Gateway,
    audited_gateway,
    basic,
    eventually,
    gateway_settings,
    index_level,
    start_gateway,
    stop_gateway,
)


async def test_requests_by_route_method_status_and_caller(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    before = await scrape(gw, backend)
    assert (await gw.call("GET", "/_couchgate/users/chw1/scope", auth=admin(backend)))[0] == 200
    assert (await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1")))[0] == 200
    assert (await gw.call("GET", f"/{medic}/p9", auth=auth("clerk")))[0] in (200, 404)
    status, token, _ = await gw.call(
        "POST", "/_couchgate/token", json={"name": "clerk", "password": "pw-clerk"}
    )
    assert status == 200, token
    assert (await gw.call("GET", f"/{medic}", headers={"Authorization": f"Bearer {token['token']}"}))[
        0
    ] == 200
    assert (await gw.call("GET", f"/{medic}"))[0] == 401
    after = await scrape(gw, backend)

    def grew(route: str, method: str, status: str, caller: str) -> float:
        labels = {"route": route, "method": method, "status": status, "caller": caller}
        return after.value("couchgate_requests_total", **labels) - before.value(
            "couchgate_requests_total", **labels
        )

    assert grew("users", "GET", "2xx", "admin") == 1
    assert grew("offline_changes", "GET", "2xx", "offline") == 1
    assert grew("passthrough", "GET", "2xx", "token") == 1
    assert grew("passthrough", "GET", "4xx", "anonymous") == 1
    assert grew("token", "POST", "2xx", "anonymous") == 1
    online = after.value("couchgate_requests_total", route="passthrough", caller="online")
    assert online - before.value("couchgate_requests_total", route="passthrough", caller="online") == 1
    timed = {"route": "offline_changes", "caller": "offline"}
    assert (
        after.value("couchgate_request_duration_seconds_count", **timed)
        == before.value("couchgate_request_duration_seconds_count", **timed) + 1
    )


async def test_labels_stay_bounded_whatever_the_paths(gw: Gateway, medic: str, backend: PouchServer) -> None:
    for i in range(15):
        await gw.call("GET", f"/{medic}/doc-{i}", auth=auth("chw1"))
        await gw.call("GET", f"/{medic}/doc-{i}?x={i}", auth=auth("clerk"))
        await gw.call("PATCH", f"/other-{i}/x", auth=auth("clerk"))
    after = await scrape(gw, backend)
    routes = {labels["route"] for labels, _ in after.samples["couchgate_requests_total"]}
    methods = {labels["method"] for labels, _ in after.samples["couchgate_requests_total"]}
    assert not any("doc-" in r or "other-" in r for r in routes), routes
    assert "offline_doc" in routes and "passthrough" in routes
    assert "PATCH" not in methods and "other" in methods


async def test_offline_sync_docs_bytes_backfills_and_refusals(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    before = await scrape(gw, backend)
    body = {"docs": [{"id": "p1"}, {"id": "p2"}, {"id": "house1"}, {"id": "p9"}]}
    status, answer, _ = await gw.call("POST", f"/{medic}/_bulk_get?revs=true", auth=auth("chw1"), json=body)
    assert status == 200, answer
    # A since token from nowhere: the feed restarts from the beginning (a backfill).
    assert (await gw.call("GET", f"/{medic}/_changes?since=bogus-token", auth=auth("chw1")))[0] == 200
    assert (await gw.call("GET", f"/{medic}/_changes?since=0", auth=auth("chw1")))[0] == 200
    foreign = {"_id": "r-far", "type": "data_record", "form": "visit", "fields": {"patient_id": "9009"},
               "contact": {"_id": "chw1_person"}}  # fmt: skip
    status, refused, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [foreign]}
    )
    assert status == 201 and refused[0]["error"] == "forbidden", refused
    after = await scrape(gw, backend)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("couchgate_offline_docs_served_total") == 3  # p9 is not chw1's
    assert grew("couchgate_offline_bytes_served_total", route="offline_bulk_get") > 200
    assert grew("couchgate_offline_backfills_total") == 1
    assert grew("couchgate_offline_forbidden_writes_total") == 1
    assert after.value("couchgate_offline_removals_sent_total") == 0
    assert "couchgate_offline_removals_sent_total" in after.names()


async def test_live_feeds_are_counted_while_open(gw: Gateway, medic: str, backend: PouchServer) -> None:
    first = await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
    since = first[1]["last_seq"]
    feed = asyncio.create_task(
        gw.call("GET", f"/{medic}/_changes?feed=longpoll&timeout=20000&since={since}", auth=auth("chw1"))
    )

    async def live(n: int) -> bool:
        return (await scrape(gw, backend)).value("couchgate_offline_live_feeds") == n

    assert await eventually(lambda: live(1))
    backend.request("PUT", f"/{medic}/p-new", {"type": "person", "parent": {"_id": "house1"}})
    status, body, _ = await asyncio.wait_for(feed, 30)
    assert status == 200 and [r["id"] for r in body["results"]] == ["p-new"]
    assert await live(0)
    done = await scrape(gw, backend)
    assert done.value("couchgate_requests_total", route="offline_changes_live", caller="offline") == 1


async def test_import_docs_by_status_and_auth_failures(gw: Gateway, medic: str, backend: PouchServer) -> None:
    before = await scrape(gw, backend)
    docs = [{"_id": "imp-1", "type": "person"}, {"_id": "imp-2", "type": "person"}, {"_id": "_bad"}]
    for dry_run in ("true", "false"):
        status, _, _ = await gw.call("POST", f"/import?dry_run={dry_run}", auth=admin(backend), json=docs)
        assert status == 200
    assert (await gw.call("GET", f"/{medic}", auth=basic("chw1", "wrong")))[0] == 401
    assert (await gw.call("POST", "/_couchgate/token", json={"name": "chw1", "password": "no"}))[0] == 401
    after = await scrape(gw, backend)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("couchgate_import_docs_total", status="created", dry_run="false") == 2
    assert grew("couchgate_import_docs_total", status="created", dry_run="true") == 2
    assert grew("couchgate_import_docs_total", status="invalid") == 2
    assert grew("couchgate_auth_failures_total", kind="authenticate") == 1
    assert grew("couchgate_auth_failures_total", kind="token") == 1


async def test_throttled_logins_are_counted(backend: PouchServer, medic: str) -> None:
    settings = gateway_settings(
        backend, medic, login_free_failures=1, login_free_failures_per_address=1000, login_max_delay=60.0
    )
    gw = await start_gateway(settings)
    try:
        before = await scrape(gw, backend)
        statuses = [(await gw.call("GET", f"/{medic}", auth=basic("chw1", f"no-{i}")))[0] for i in range(4)]
        session = {"name": "chw1", "password": "no-4"}
        statuses.append((await gw.call("POST", "/_session", json=session))[0])
        after = await scrape(gw, backend)
    finally:
        await stop_gateway(gw)
    assert statuses == [401, 401, 429, 429, 429], statuses  # one free, one counted
    grew = after.value("couchgate_auth_throttled_total") - before.value("couchgate_auth_throttled_total")
    assert grew == 3  # two Basic requests and the POST /_session


async def test_upstream_requests_and_index_position(gw: Gateway, medic: str, backend: PouchServer) -> None:
    before = await scrape(gw, backend)
    assert (await gw.call("GET", f"/{medic}/p1", auth=admin(backend)))[0] == 200
    after = await scrape(gw, backend)
    got = "couchgate_upstream_requests_total"
    assert after.value(got, method="GET", status="2xx") > before.value(got, method="GET", status="2xx")
    assert after.value("couchgate_upstream_request_duration_seconds_count", method="GET") > 0
    assert after.value("couchgate_index_changes_behind") == 0
    assert after.value("couchgate_index_lag_seconds") == 0
    assert after.value("couchgate_index_docs") > 0


async def test_index_lag_counts_the_changes_not_applied(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """As if the index were still at the start and last level five seconds ago."""
    couch = gw.server.app[COUCH]
    behind_from_start = SimpleNamespace(since=0, path=f"/{medic}", last_sync_at=time.monotonic() - 5)
    seconds, behind = await index_lag(couch, behind_from_start)
    status, info = backend.request("GET", f"/{medic}")
    assert status == 200
    assert behind == info["doc_count"] + info.get("doc_del_count", 0)
    assert seconds >= 5


async def test_upstream_failures_and_follower_restarts(backend: PouchServer, medic: str) -> None:
    """CouchDB unreachable: errors by kind, and the follower starting again."""
    settings = gateway_settings(backend, medic, metrics_public=True, couch_url="http://127.0.0.1:9")
    gw = await start_gateway(settings)
    try:

        async def restarted() -> bool:
            found = await scrape_public(gw)
            return found.value("couchgate_index_follower_restarts_total") >= 1

        assert await eventually(restarted, within=30)
        found = await scrape_public(gw)
        assert found.value("couchgate_upstream_errors_total", kind="connect") >= 1
        assert math.isnan(found.value("couchgate_index_changes_behind"))
    finally:
        await stop_gateway(gw)


async def scrape_public(gw: Gateway) -> Scrape:
    status, body, _ = await gw.call("GET", "/_couchgate/metrics")
    assert status == 200, body
    return Scrape(body.decode())


async def test_audit_writer_metrics(backend: PouchServer, db: str) -> None:
    async with audited_gateway(backend, db) as gw:
        assert (await gw.call("PUT", f"/{db}/a1", auth=admin(backend), json={"v": 1}))[0] == 201

        async def written() -> bool:
            found = await scrape(gw, backend)
            return (
                found.value("couchgate_audit_written_total") >= 1
                and found.value("couchgate_audit_batches_total") >= 1
            )

        assert await eventually(written)
        found = await scrape(gw, backend)
        assert found.value("couchgate_audit_write_failures_total") == 0


async def test_audit_write_failures_are_counted(backend: PouchServer) -> None:
    """An audit database that cannot be reached: each failed flush is counted."""
    settings = gateway_settings(backend, "medic", couch_url="http://127.0.0.1:9")
    session = new_session(settings)
    try:
        log = AuditLog(CouchClient(session, settings), "audit-x")
        log.record(AuditEntry("create", "written"))
        assert await log.flush() is False
        assert await log.flush() is False
        assert log.write_failures == 2 and log.batches == 0
    finally:
        await session.close()


async def test_removals_sent_are_counted(gw: Gateway, medic: str, backend: PouchServer) -> None:
    first = await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
    before = await scrape(gw, backend)
    status, house = backend.request("GET", f"/{medic}/house1")
    moved = {**house, "parent": lineage("area2", "hc1", "district1")}
    assert backend.request("PUT", f"/{medic}/house1", moved)[0] == 201
    await index_level(gw, backend, medic)
    status, body, _ = await gw.call(
        "GET", f"/{medic}/_changes?since={first[1]['last_seq']}", auth=auth("chw1")
    )
    assert status == 200 and sum(1 for r in body["results"] if r.get("deleted")) == 6, body
    after = await scrape(gw, backend)
    grew = after.value("couchgate_offline_removals_sent_total") - before.value(
        "couchgate_offline_removals_sent_total"
    )
    assert grew == 6


async def upstream_posts(gw: Gateway, backend: PouchServer, path: str, body: Any, auth: str) -> float:
    """Requests to CouchDB with POST while couchgate answers one request (audit log off)."""
    before = await scrape(gw, backend)
    status, answer, _ = await gw.call("POST", path, auth=auth, json=body)
    assert status in (200, 201), answer
    rows = answer if isinstance(answer, list) else answer["results"]
    assert all("ok" in r or r.get("status") in ("created", "unchanged") for r in rows), rows
    after = await scrape(gw, backend)
    metric = "couchgate_upstream_requests_total"
    return after.value(metric, method="POST") - before.value(metric, method="POST")


async def test_writes_of_new_docs_read_no_stored_docs(backend: PouchServer, medic: str) -> None:
    """Docs the scope index has never seen (once level with CouchDB) did not exist: a push
    of new reports, or an import of new docs, costs the write alone upstream; an edit still
    reads what it edits."""
    line = lineage("chw1_person", "area1", "hc1", "district1")

    def new(prefix: str) -> list[dict[str, Any]]:
        return [{"_id": f"{prefix}{i}", "type": "data_record", "form": "visit", "contact": line,
                 "fields": {"patient_uuid": "p1"}} for i in range(3)]  # fmt: skip

    gw = await start_gateway(gateway_settings(backend, medic, audit_enabled=False))
    try:
        await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))  # the index built
        push = f"/{medic}/_bulk_docs"
        assert await upstream_posts(gw, backend, push, {"docs": new("r_push")}, auth("chw1")) == 1
        _, p1 = backend.request("GET", f"/{medic}/p1")
        edit = {"docs": [{**p1, "name": "edited"}]}
        assert await upstream_posts(gw, backend, push, edit, auth("chw1")) == 2  # the read, the write
        # A foreign doc is refused from the index, unread: it costs what a missing id costs.
        _, p3 = backend.request("GET", f"/{medic}/p3")
        status, rows, _ = await gw.call(
            "POST", push, auth=auth("chw1"), json={"docs": [{**p3, "parent": lineage("house1", "area1")}]}
        )
        assert status == 201 and rows[0]["error"] == "conflict", rows
        before = await scrape(gw, backend)
        await gw.call("POST", push, auth=auth("chw1"), json={"docs": [{**p3, "name": "x"}]})
        after = await scrape(gw, backend)
        metric = "couchgate_upstream_requests_total"
        assert after.value(metric, method="POST") == before.value(metric, method="POST")  # no read, no write
        imported = f"/{medic}/_couchgate/import"
        assert await upstream_posts(gw, backend, imported, new("r_imp"), admin(backend)) == 1
        assert (
            await upstream_posts(gw, backend, imported, new("r_imp"), admin(backend)) == 1
        )  # read, no write
    finally:
        await stop_gateway(gw)
