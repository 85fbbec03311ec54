"""Transparent proxying of CouchDB for callers couchgate lets through (basic auth here)."""

from __future__ import annotations

import asyncio
import base64

import orjson

from support import Gateway, TestUser, assert_couch_error


async def test_doc_crud_preserves_status_bodies_and_query(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1", auth=alice, json={"n": 1})
    assert status == 201 and body["ok"] is True
    rev1 = body["rev"]
    status, body, _ = await gateway.call("GET", f"/{db}/doc1", auth=alice)
    assert status == 200 and body == {"_id": "doc1", "_rev": rev1, "n": 1}
    # A stale rev is CouchDB's own 409, passed through unchanged.
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1", auth=alice, json={"n": 2, "_rev": "1-abc"})
    assert_couch_error(status, body, 409, "conflict")
    status, body, _ = await gateway.call("PUT", f"/{db}/doc1?rev={rev1}", auth=alice, json={"n": 2})
    assert status == 201
    rev2 = body["rev"]
    status, body, _ = await gateway.call("GET", f"/{db}/doc1?revs=true", auth=alice)
    assert body["_revisions"]["start"] == 2 and len(body["_revisions"]["ids"]) == 2
    status, body, _ = await gateway.call("DELETE", f"/{db}/doc1?rev={rev2}", auth=alice)
    assert status == 200 and body["ok"] is True
    status, body, _ = await gateway.call("GET", f"/{db}/doc1", auth=alice)
    assert_couch_error(status, body, 404, "not_found")


async def test_post_creates_and_location_points_at_couchgate(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    status, body, headers = await gateway.call("PUT", f"/{db}/located", auth=users["alice"].auth, json={})
    assert status == 201
    location = headers.get("Location")
    if location is not None:  # CouchDB sends one; pouchdb-server may not
        assert location.startswith(gateway.url), location
    status, body, _ = await gateway.call("POST", f"/{db}", auth=users["alice"].auth, json={"x": 1})
    assert status == 201 and body["id"]


async def test_doc_ids_with_encoded_slashes_round_trip(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/a%2Fb", auth=alice, json={"v": 1})
    assert status == 201, body
    status, body, _ = await gateway.call("GET", f"/{db}/a%2Fb", auth=alice)
    assert status == 200 and body["_id"] == "a/b"


async def test_bulk_docs_and_all_docs(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    docs = [{"_id": f"d{i:03d}", "i": i} for i in range(50)]
    status, body, _ = await gateway.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": docs})
    assert status == 201 and sorted(r["id"] for r in body) == [d["_id"] for d in docs]
    status, body, _ = await gateway.call(
        "GET", f'/{db}/_all_docs?include_docs=true&startkey="d010"&endkey="d019"', auth=alice
    )
    assert status == 200 and [r["id"] for r in body["rows"]] == [f"d{i:03d}" for i in range(10, 20)]
    assert body["rows"][0]["doc"]["i"] == 10
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_all_docs", auth=alice, json={"keys": ["d001", "nope"]}
    )
    assert [r.get("id") for r in body["rows"]] == ["d001", None]
    assert body["rows"][1]["error"] == "not_found"


async def test_attachments_stream_both_ways(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value

    async def chunks():  # a chunked upload with no Content-Length
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    status, body, _ = await gateway.call(
        "PUT",
        f"/{db}/withatt/blob.bin",
        auth=alice,
        data=chunks(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    async with gateway.http.get(
        f"{gateway.url}/{db}/withatt/blob.bin", headers={"Authorization": alice}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/octet-stream")
        assert await resp.read() == payload
    status, body, _ = await gateway.call("GET", f"/{db}/withatt", auth=alice)
    assert body["_attachments"]["blob.bin"]["length"] == len(payload)


async def test_inline_attachment_in_json(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    data = base64.b64encode(b"hello").decode()
    doc = {"_attachments": {"a.txt": {"content_type": "text/plain", "data": data}}}
    status, _, _ = await gateway.call("PUT", f"/{db}/inline", auth=users["alice"].auth, json=doc)
    assert status == 201
    async with gateway.http.get(
        f"{gateway.url}/{db}/inline/a.txt", headers={"Authorization": users["alice"].auth}
    ) as resp:
        assert await resp.read() == b"hello"


async def test_changes_normal_feed(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    await gateway.call("POST", f"/{db}/_bulk_docs", auth=alice, json={"docs": [{"_id": "c1"}, {"_id": "c2"}]})
    status, body, _ = await gateway.call("GET", f"/{db}/_changes?style=all_docs", auth=alice)
    assert status == 200 and {r["id"] for r in body["results"]} == {"c1", "c2"}
    assert "last_seq" in body


async def test_changes_longpoll_wakes_on_write(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"].auth
    _, body, _ = await gateway.call("GET", f"/{db}/_changes", auth=alice)
    since = body["last_seq"]

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        await gateway.call("PUT", f"/{db}/late", auth=alice, json={})

    writer = asyncio.create_task(write_later())
    status, body, _ = await gateway.call(
        "GET", f"/{db}/_changes?feed=longpoll&since={since}&heartbeat=1000", auth=alice
    )
    await writer
    assert status == 200 and [r["id"] for r in body["results"]] == ["late"]


async def test_continuous_changes_stream_without_buffering(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    """Rows arrive while the endless feed is still open: nothing waits for its end."""
    alice = users["alice"].auth
    await gateway.call("PUT", f"/{db}/first", auth=alice, json={})
    url = f"{gateway.url}/{db}/_changes?feed=continuous&heartbeat=500"
    seen: list[str] = []
    async with gateway.http.get(url, headers={"Authorization": alice}) as resp:
        assert resp.status == 200

        async def read_rows() -> None:
            async for line in resp.content:
                if line.strip():
                    seen.append(orjson.loads(line)["id"])
                    if "second" in seen:
                        return

        reader = asyncio.create_task(read_rows())
        await asyncio.sleep(0.3)
        await gateway.call("PUT", f"/{db}/second", auth=alice, json={})
        await asyncio.wait_for(reader, timeout=10)
    assert seen == ["first", "second"]


async def test_non_member_is_refused_by_couchdb(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    status, body, _ = await gateway.call("GET", f"/{db}/_all_docs", auth=users["mallory"].auth)
    # pouchdb-server answers 401 where CouchDB answers 403; both are CouchDB-shaped refusals.
    assert status in (401, 403)
    assert_couch_error(status, body, status)
