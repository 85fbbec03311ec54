"""Findings of an attacker's review (2026-11-29, the sixth): one offline user could take the
process from everyone. A body of 480 KB naming one 20 KB doc 40,000 times in `_bulk_get` (or
`_all_docs` keys) made couchgate build an 810 MB answer in memory (2.4 GB at its peak); a
`_bulk_docs` of 100,000 refused docs, a `_revs_diff` of 400,000 ids, held the event loop for
seconds (nobody else answered); a live `_changes` with 100,000 `doc_ids` held 25 MB. Now what
one request may name is bounded (`max_bulk_items`, CouchDB's max_bulk_get_count and
max_bulk_docs_count answers) and a large answer of rows is written as it goes, each distinct
row serialized once. Also: `open_revs` with `latest` answered a "missing" row beside the
winner when a leaf the user may not see stood below the revision asked (CouchDB only), and
`_all_docs/queries` was answered as `_all_docs`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.devserver.backend import PouchServer

from offline_data import auth, conflicted_house
from support import Gateway, assert_couch_error, gateway_settings, start_gateway, stop_gateway

CHW1 = auth("chw1")
LIMIT = 50


@pytest.fixture
async def small(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(backend, medic, max_bulk_items=LIMIT))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize(
    ("method", "path", "body", "error"),
    [
        (
            "POST",
            "_bulk_get",
            lambda n: {"docs": [{"id": f"x{i}"} for i in range(n)]},
            "max_bulk_get_count_exceeded",
        ),
        (
            "POST",
            "_bulk_docs",
            lambda n: {"docs": [{"_id": f"x{i}"} for i in range(n)]},
            "max_bulk_docs_count_exceeded",
        ),
        ("POST", "_revs_diff", lambda n: {f"x{i}": ["1-a"] for i in range(n)}, "too_large"),
        ("POST", "_all_docs", lambda n: {"keys": [f"x{i}" for i in range(n)]}, "too_large"),
        ("POST", "_changes?filter=_doc_ids", lambda n: {"doc_ids": [f"x{i}" for i in range(n)]}, "too_large"),
    ],
)
async def test_what_one_request_names_is_bounded(
    small: Gateway, medic: str, method: str, path: str, body: Any, error: str
) -> None:
    status, answer, _ = await small.call(method, f"/{medic}/{path}", auth=CHW1, json=body(LIMIT))
    assert status in (200, 201), answer
    status, answer, _ = await small.call(method, f"/{medic}/{path}", auth=CHW1, json=body(LIMIT + 1))
    assert_couch_error(status, answer, 413, error)


async def test_a_doc_named_many_times_is_answered_each_time_without_copies(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    p1 = backend.request("GET", f"/{medic}/p1")[1]
    assert isinstance(p1, dict)
    status, _ = backend.request("PUT", f"/{medic}/p1", {**p1, "notes": "x" * 20_000})
    assert status == 201
    n = 2_000  # 40 MB of answer: written in chunks as the client reads
    status, body, headers = await gw.call(
        "POST", f"/{medic}/_bulk_get", auth=CHW1, json={"docs": [{"id": "p1"}] * n}
    )
    assert status == 200 and int(headers["Content-Length"]) > 40_000_000
    assert len(body["results"]) == n and all(r == body["results"][0] for r in body["results"])
    assert body["results"][0]["docs"][0]["ok"]["notes"] == "x" * 20_000
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_all_docs?include_docs=true", auth=CHW1, json={"keys": ["p1"] * n}
    )
    assert status == 200 and body["total_rows"] > 0 and len(body["rows"]) == n
    assert all(r == body["rows"][0] for r in body["rows"]) and body["rows"][0]["doc"]["notes"] == "x" * 20_000


async def test_open_revs_latest_names_no_hidden_leaf_below_the_revision_asked(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    base, away = conflicted_house(backend, medic)
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    for revs in ("&revs=true", ""):
        query = f'open_revs=["{base}"]&latest=true{revs}'
        status, body, _ = await gw.call("GET", f"/{medic}/house1?{query}", auth=CHW1)
        assert status == 200, body
        assert [list(row) for row in body] == [["ok"]], body  # the winner, and no "missing" beside it
        assert away["_rev"] not in orjson.dumps(body).decode()


async def test_all_docs_queries_and_keys_twice_are_not_answered_as_all_docs(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call("POST", f"/{medic}/_all_docs/queries", auth=CHW1, json={"queries": [{}]})
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call(
        "POST", f'/{medic}/_all_docs?keys=["p2"]', auth=CHW1, json={"keys": ["p1"]}
    )
    assert_couch_error(status, body, 400, "query_parse_error")


async def test_all_docs_keys_are_paged_as_couchdb_pages_them(gw: Gateway, medic: str) -> None:
    """A fresh review's finding: with `keys`, `skip` and `limit` were dropped (10,000 rows for
    `limit=1`). CouchDB 3.4 pages the keys as asked, missing ones too, and its offset is null."""
    keys = ["p1", "nothing-here", "p2", "house1"]
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_all_docs?skip=1&limit=2", auth=CHW1, json={"keys": keys}
    )
    assert status == 200, body
    assert [r["key"] for r in body["rows"]] == ["nothing-here", "p2"] and body["offset"] is None
    assert body["rows"][0] == {"key": "nothing-here", "error": "not_found"}
    status, body, _ = await gw.call("POST", f"/{medic}/_all_docs?limit=0", auth=CHW1, json={"keys": keys})
    assert status == 200 and body["rows"] == []


async def test_atts_since_counts_against_the_bound(small: Gateway, medic: str) -> None:
    since = [f"1-{i:032x}" for i in range(LIMIT + 1)]
    status, body, _ = await small.call(
        "POST", f"/{medic}/_bulk_get", auth=CHW1, json={"docs": [{"id": "p1", "atts_since": since}]}
    )
    assert_couch_error(status, body, 413, "too_large")
    status, body, _ = await small.call(
        "POST", f"/{medic}/_bulk_get", auth=CHW1, json={"docs": [{"id": "p1", "atts_since": since[:LIMIT]}]}
    )
    assert status == 200, body
