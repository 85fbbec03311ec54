"""What the audit log records, against the real backend: each kind of write and security
event is exactly one correct entry, whatever the shape or size of the request."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
from audit_support import (
    admin,
    audit_settings,
    chain_breaks,
    entries,
    oldest_first,
    pick,
    raw_request,
    stored,
)

from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT

from offline_data import auth as offline_auth
from offline_data import report
from support import Gateway, TestUser, audited_gateway, basic, eventually, start_gateway, stop_gateway


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
    history = await oldest_first(agw, backend, "&doc=doc1")
    assert pick(history, "action", "outcome", "rev_before", "rev_after", "doc_type") == [
        ("create", "written", None, created["rev"], "person"),
        ("update", "written", created["rev"], updated["rev"], "person"),
        ("attachment", "written", updated["rev"], attached["rev"], None),
        ("delete", "written", attached["rev"], deleted["rev"], None),
    ]
    assert all(e["user"] == "alice" and e["db"] == db and e["roles"] == ["member"] for e in history)
    assert len({e["request_id"] for e in history}) == 4
    assert pick(await entries(agw, backend, f"&doc={posted['id']}"), "action", "rev_after", "doc_type") == [
        ("create", posted["rev"], "clinic")
    ]
    assert len(await entries(agw, backend)) == 5  # and nothing else was recorded


async def test_bulk_docs_one_entry_per_doc(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    _, taken, _ = await agw.call("PUT", f"/{db}/taken", auth=alice, json={})
    docs = [{"_id": "b1", "type": "person"}, {"_id": "b2"}, {"_id": "taken"}]
    status, rows, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs})
    assert status == 201
    revs = {r["id"]: r.get("rev") for r in rows}
    assert pick(await entries(agw, backend, "&doc=b1"), "action", "outcome", "rev_after", "doc_type") == [
        ("create", "written", revs["b1"], "person")
    ]
    assert pick(await entries(agw, backend, "&doc=b2"), "action", "outcome", "rev_after") == [
        ("create", "written", revs["b2"])
    ]
    assert pick(await entries(agw, backend, "&doc=taken"), "action", "outcome", "rev_after") == [
        ("create", "conflict", None),
        ("create", "written", taken["rev"]),
    ]
    status, _, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice,
                                  json={"docs": [{"_id": "rep", "_rev": "3-abc"}], "new_edits": False})  # fmt: skip
    assert status == 201
    assert pick(await entries(agw, backend, "&doc=rep"), "action", "outcome", "rev_before", "rev_after") == [
        ("replicate", "written", None, "3-abc")
    ]
    assert len(await entries(agw, backend)) == 5


async def post_chunked(gw: Gateway, path: str, auth: str, payload: bytes) -> tuple[int, Any]:
    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: couchgate cannot know the size
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    headers = {"Authorization": auth, "Content-Type": "application/json", "Accept": "application/json"}
    async with gw.http.post(f"{gw.url}{path}", data=chunked(), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_chunked_new_edits_false_bulk_docs_is_one_entry_per_doc_with_its_rev(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    docs = [
        {"_id": "rep1", "_rev": "2-abc", "type": "person"},
        {"_id": "rep2", "_rev": "1-def"},
        {"_id": "rep3", "_rev": "4-aaa", "_deleted": True},
    ]
    payload = orjson.dumps({"docs": docs, "new_edits": False})
    status, answer = await post_chunked(agw, f"/{db}/_bulk_docs", users["alice"].auth, payload)
    assert (status, answer) == (201, [])
    assert backend.request("GET", f"/{db}/rep1")[1]["_rev"] == "2-abc"  # type: ignore[index]
    recorded = await oldest_first(agw, backend)
    assert pick(recorded, "action", "doc_id", "outcome", "rev_after", "doc_type") == [
        ("replicate", "rep1", "written", "2-abc", "person"),
        ("replicate", "rep2", "written", "1-def", None),
        ("delete", "rep3", "written", "4-aaa", None),
    ]


async def test_bulk_docs_past_the_json_limit_are_never_recorded_as_nothing(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    gw = await start_gateway(audit_settings(backend, db, max_json_bytes=2048))
    alice = users["alice"].auth
    admin = basic(backend.admin_user, backend.admin_password)
    try:
        # From anyone but an admin, a body that cannot be read whole is not judged (does it
        # name couchgate's own `_local` docs?), so it is not forwarded either.
        replicated = [{"_id": f"big-{i:03d}", "_rev": "1-abc", "pad": "x" * 40} for i in range(40)]
        status, answer, _ = await gw.call("POST", f"/{db}/_bulk_docs", auth=alice,
                                          json={"docs": replicated, "new_edits": False})  # fmt: skip
        assert status == 413, answer
        # An admin's: declared length past the limit, streamed through unread; CouchDB answers [] for it.
        status, answer, _ = await gw.call("POST", f"/{db}/_bulk_docs", auth=admin,
                                          json={"docs": replicated, "new_edits": False})  # fmt: skip
        assert (status, answer) == (201, [])
        # Chunked and past the limit: the part read is sent on, the rest streams after it.
        created = [{"_id": f"chunk-{i:03d}", "pad": "x" * 40} for i in range(40)]
        status, rows = await post_chunked(gw, f"/{db}/_bulk_docs", admin, orjson.dumps({"docs": created}))
        assert status == 201 and len(rows) == 40
        _, info = backend.request("GET", f"/{db}")
        assert info["doc_count"] == 80  # type: ignore[index]
        recorded = await oldest_first(gw, backend)
        unknown = [e for e in recorded if e["outcome"] == "unknown"]
        assert pick(unknown, "action", "doc_id", "db") == [("bulk_docs", None, db), ("bulk_docs", None, db)]
        assert all("not itemised" in e["reason"] for e in unknown)
        # The rows CouchDB answered for the chunked request are itemised, each with its rev.
        itemised = [e for e in recorded if e["outcome"] == "written"]
        assert pick(itemised, "doc_id", "rev_after") == [(r["id"], r["rev"]) for r in rows]
        assert len(recorded) == 2 + 40
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{gw.settings.audit_db}")


async def test_a_conflict_past_the_first_mib_of_the_answer_is_recorded_as_a_conflict(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice, pad = users["alice"].auth, "p" * 240
    _, taken, _ = await agw.call("PUT", f"/{db}/taken{pad}", auth=alice, json={})
    docs = [{"_id": f"d{i:05d}{pad}"} for i in range(4200)] + [{"_id": f"taken{pad}"}]
    payload = io.BytesIO(orjson.dumps({"docs": docs}))  # aiohttp warns about bytes this large
    status, rows, _ = await agw.call("POST", f"/{db}/_bulk_docs", auth=alice, data=payload,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 201 and len(orjson.dumps(rows)) > 1024 * 1024
    assert await agw.server.app[AUDIT].flush()  # type: ignore[attr-defined]
    # Read straight from the audit database: indexing 4,000 entries would only slow the test.
    recorded = sorted(stored(backend, agw.settings.audit_db), key=lambda e: e["seq"])
    assert pick([e for e in recorded if e["doc_id"] == f"taken{pad}"], "action", "outcome", "rev_after") == [
        ("create", "written", taken["rev"]),
        ("create", "conflict", None),
    ]
    answered = {r["id"]: r for r in rows}  # pouchdb-server's rows need not be in request order
    assert pick(recorded[1:], "doc_id", "outcome", "rev_after") == [
        (d["_id"], "conflict" if "error" in answered[d["_id"]] else "written", answered[d["_id"]].get("rev"))
        for d in docs
    ]


async def test_writes_other_than_docs_are_recorded_once_and_reads_are_not(
    agw: Gateway, backend: PouchServer, db: str
) -> None:
    root, other = admin(backend), f"{db}-x"
    calls: list[tuple[str, str, Any]] = [
        ("PUT", f"/{other}", None),
        ("PUT", f"/{other}/_security", {"admins": {"names": [], "roles": []},
                                         "members": {"names": [], "roles": ["member"]}}),
        ("POST", f"/{db}/_index", {"index": {"fields": ["type"]}, "name": "by-type", "ddoc": "idx"}),
        ("POST", f"/{db}/_find", {"selector": {"type": "person"}}),  # a read
        ("POST", f"/{db}/_all_docs", {"keys": ["x"]}),  # a read
        ("PUT", f"/{db}/_design/h", {"updates": {"stamp": "function (doc, req) { doc = doc || {_id: req.id};"
                                                          " doc.stamped = true; return [doc, 'ok']; }"}}),
        ("PUT", f"/{db}/_design/h/_update/stamp/d1", None),
        ("POST", f"/{db}/_purge", {"d1": ["1-abc"]}),
        ("DELETE", f"/{db}/_index/_design/idx/json/by-type", None),
        ("DELETE", f"/{other}", None),
    ]  # fmt: skip
    statuses = []
    for method, path, body in calls:
        status, answer, _ = await agw.call(method, path, auth=root, json=body)
        assert status < 500 or path.endswith("by-type"), (path, status, answer)
        statuses.append(status)
    assert backend.request("GET", f"/{db}/d1")[1]["stamped"] is True  # type: ignore[index]

    def outcome(status: int) -> str:
        return "written" if status < 300 else "invalid"

    recorded = await oldest_first(agw, backend)
    assert pick(recorded, "action", "db", "doc_id", "outcome") == [
        ("db_create", other, None, outcome(statuses[0])),
        ("security", other, None, outcome(statuses[1])),
        ("index", db, "_design/idx", outcome(statuses[2])),
        ("create", db, "_design/h", outcome(statuses[5])),
        ("update_handler", db, "d1", outcome(statuses[6])),
        ("purge", db, "d1", outcome(statuses[7])),  # pouchdb-server has no _purge: refused, still recorded
        ("index", db, "_design/idx", outcome(statuses[8])),
        ("db_delete", other, None, outcome(statuses[9])),
    ]
    assert recorded[1]["details"]["security"]["members"]["roles"] == ["member"]
    assert all(e["user"] == backend.admin_user for e in recorded)


async def test_security_events(agw: Gateway, backend: PouchServer, fresh_user: TestUser) -> None:
    name, password = fresh_user.name, fresh_user.password
    await agw.call("POST", "/_session", json={"name": name, "password": password})
    await agw.call("POST", "/_session", json={"name": name, "password": "wrong"})
    await agw.call("POST", "/_couchgate/token", json={"name": name, "password": password})
    await agw.call("POST", "/_couchgate/token", json={"name": "nobody-here", "password": "nope"})
    await agw.call("GET", "/_all_dbs", auth=basic(name, "not-her-password"))
    logins = await entries(agw, backend, "&action=login")
    assert [(e["user"], e["outcome"]) for e in logins] == [(name, "failure"), (name, "success")]
    tokens = await entries(agw, backend, "&action=token")
    assert [(e["user"], e["outcome"]) for e in tokens] == [("nobody-here", "failure"), (name, "success")]
    [failure] = await entries(agw, backend, "&action=authenticate")
    assert failure["outcome"] == "failure" and failure["path"] == "/_all_dbs"
    stored_text = str(stored(backend, agw.settings.audit_db))
    assert password not in stored_text and "not-her-password" not in stored_text


async def test_a_user_agent_that_is_not_utf8_is_recorded_and_breaks_nothing(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], fresh_user: TestUser
) -> None:
    def request(method: str, path: str, auth: str, body: bytes = b"") -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode() + \
            b"User-Agent: probe\xff\r\nConnection: close\r\n\r\n" + body  # fmt: skip

    answer = await raw_request(agw, request("PUT", f"/{db}/ua1", users["alice"].auth, b"{}"))
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    answer = await raw_request(agw, request("GET", "/_all_dbs", basic(fresh_user.name, "wrong")))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    await agw.call("PUT", f"/{db}/ua2", auth=users["alice"].auth, json={})
    recorded = await oldest_first(agw, backend)
    assert pick(recorded, "action", "doc_id", "outcome", "seq") == [
        ("create", "ua1", "written", 1),
        ("authenticate", None, "failure", 2),
        ("create", "ua2", "written", 3),
    ]
    assert [e["user_agent"] for e in recorded[:2]] == ["probe\ufffd", "probe\ufffd"]
    assert await chain_breaks(agw) == []
    assert agw.server.app[AUDIT].health()["failed"] == 0  # type: ignore[attr-defined]


async def test_denied_requests_and_forbidden_docs(backend: PouchServer, medic: str) -> None:
    async with audited_gateway(backend, medic) as gw:
        await gw.call("GET", "/_all_dbs", auth=offline_auth("chw1"))
        await gw.call("POST", f"/{medic}/_bulk_docs", auth=offline_auth("chw1"),
                      json={"docs": [report("r_no", ("chw1_person",), patient_uuid="p9")]})  # fmt: skip
        await gw.call("PUT", f"/{medic}/p9", auth=offline_auth("chw1"), json={"type": "person"})
        [denied] = await entries(gw, backend, "&outcome=denied")
        assert (denied["user"], denied["path"], denied["action"]) == ("chw1", "/_all_dbs", "request")
        forbidden = await oldest_first(gw, backend, "&outcome=forbidden")
        assert pick(forbidden, "doc_id", "action") == [("r_no", "create"), ("p9", "update")]
        assert all(e["reason"] for e in forbidden)


async def test_writes_are_recorded_even_when_the_client_does_not_wait_for_the_answer(
    agw: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
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
    assert info["doc_count"] == 200  # type: ignore[index]

    async def all_recorded() -> bool:
        return len([e for e in await entries(agw, backend) if str(e["doc_id"]).startswith("hasty-")]) == 200

    assert await eventually(all_recorded)
