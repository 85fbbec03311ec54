"""Reads a decision depends on fail closed (`proxy.couch.docs`): an answer CouchDB would
not give, or a failed read, refuses the request; it is never taken for a missing doc nor
passed to a device as the device's own answer. The faults are injected into the real
backend's answers (a healthy server does not show them). Each test failed before the
reads were made to fail closed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.couch.client import JsonResult
from proxy.devserver.backend import Backend
from proxy.keys import COUCH

from offline_data import auth, report
from support import Gateway, assert_couch_error, basic

CHW1 = auth("chw1")
MINE = ("chw1_person", "area1", "hc1", "district1")
Spoil = Callable[[str, str, dict[str, Any], JsonResult], JsonResult | None]


def doc_of(backend: Backend, db: str, doc_id: str) -> dict[str, Any]:
    status, body = backend.request("GET", f"/{db}/{doc_id}")
    assert status == 200, body
    return dict(body)


def spoiling(gw: Gateway, monkeypatch: pytest.MonkeyPatch, spoil: Spoil) -> None:
    """Each upstream answer passes through `spoil` (None: left as it is)."""
    couch = gw.server.app[COUCH]
    real = couch.json

    async def spoilt(method: str, path: str, **kwargs: Any) -> JsonResult:
        result = await real(method, path, **kwargs)
        return spoil(method, path, kwargs, result) or result

    monkeypatch.setattr(couch, "json", spoilt)


ODD_ROWS: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "a row with an error that is not not_found": lambda row: [{"key": row["key"], "error": "unknown_error"}],
    "no row": lambda row: [],
}


def all_docs_rows(spoilt_id: str, odd: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Spoil:
    def spoil(method: str, path: str, kwargs: dict[str, Any], result: JsonResult) -> JsonResult | None:
        if not (method == "POST" and path.endswith("/_all_docs")):
            return None
        rows = [
            new for row in result.body["rows"] for new in (odd(row) if row["key"] == spoilt_id else [row])
        ]
        return replace(result, body={**result.body, "rows": rows})

    return spoil


@pytest.mark.parametrize("odd", ODD_ROWS.values(), ids=ODD_ROWS.keys())
async def test_a_push_over_a_stored_doc_whose_read_is_odd_is_refused_not_judged_new(
    gw: Gateway, medic: str, backend: Backend, monkeypatch: pytest.MonkeyPatch, odd: Any
) -> None:
    """W9 keeps a contact from turning into a report; the stored p1 is read with `_bulk_get`
    (answered here as pouchdb-server answers a deleted doc: unclear), then `_all_docs`,
    whose row for p1 is odd. Taken for missing, p1 was judged new and overwritten."""
    await gw.call("GET", f"/{medic}/_changes", auth=CHW1)
    p1 = doc_of(backend, medic, "p1")
    start, parent = p1["_rev"].split("-")
    turned = {**report("p1", MINE, patient_uuid="p1"), "_rev": f"{int(start) + 1}-0bad",
              "_revisions": {"start": int(start) + 1, "ids": ["0bad", parent]}}  # fmt: skip
    push = {"docs": [turned], "new_edits": False}
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json=push)
    assert status == 201 and [row["error"] for row in body] == ["forbidden"], body  # W9, read as it is

    def unclear(method: str, path: str, kwargs: dict[str, Any], result: JsonResult) -> JsonResult | None:
        if method == "POST" and path.endswith("/_bulk_get"):
            return replace(
                result, body={"results": [{"id": d["id"], "docs": [{}]} for d in kwargs["body"]["docs"]]}
            )
        return all_docs_rows("p1", odd)(method, path, kwargs, result)

    spoiling(gw, monkeypatch, unclear)
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json=push)
    assert_couch_error(status, body, 502, "bad_gateway")
    assert doc_of(backend, medic, "p1")["_rev"] == p1["_rev"]


@pytest.mark.parametrize("odd", ODD_ROWS.values(), ids=ODD_ROWS.keys())
async def test_a_feed_page_whose_body_read_is_odd_fails_not_skips_the_doc(
    gw: Gateway, medic: str, monkeypatch: pytest.MonkeyPatch, odd: Any
) -> None:
    """A doc whose body read came back odd was left out of the page, and the device's
    checkpoint moved past it: the doc never reached the device."""
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?include_docs=true", auth=CHW1)
    assert status == 200 and "p1" in {row["id"] for row in feed["results"]}
    spoiling(gw, monkeypatch, all_docs_rows("p1", odd))
    status, body, _ = await gw.call("GET", f"/{medic}/_changes?include_docs=true", auth=CHW1)
    assert_couch_error(status, body, 502, "bad_gateway")


def answering(method: str, suffix: str, status: int, rev: bool = False) -> Spoil:
    def spoil(m: str, path: str, kwargs: dict[str, Any], result: JsonResult) -> JsonResult | None:
        params = kwargs.get("params") or {}
        if m == method and path.endswith(suffix) and ("rev" in params) == rev:
            return JsonResult(
                status, {"error": "unauthorized", "reason": "Name or password is incorrect."}, {}
            )
        return None

    return spoil


async def test_the_service_accounts_refusal_is_not_the_devices(
    gw: Gateway, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB refusing couchgate's own account (a changed password) was passed to the
    phone as its own 401, which asks its user to log in again."""
    status, _, _ = await gw.call("GET", f"/{medic}/p1", auth=CHW1)
    assert status == 200
    spoiling(gw, monkeypatch, answering("GET", "/p1", 401))
    status, body, _ = await gw.call("GET", f"/{medic}/p1", auth=CHW1)
    assert_couch_error(status, body, 502, "bad_gateway")


async def test_an_older_revisions_attachment_whose_read_fails_is_not_missing(
    gw: Gateway, medic: str, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older revision is read (and judged) before its attachment is served; that read
    failing answered the attachment as missing."""
    p1 = doc_of(backend, medic, "p1")
    status, body = backend.request("PUT", f"/{medic}/p1", {**p1, "name": "renamed"})
    assert status == 201, body
    spoiling(gw, monkeypatch, answering("GET", "/p1", 500, rev=True))
    status, body, _ = await gw.call("GET", f"/{medic}/p1/att.txt?rev={p1['_rev']}", auth=CHW1)
    assert_couch_error(status, body, 502, "bad_gateway")


async def test_a_conflicts_ancestor_whose_read_fails_is_not_shown_as_compacted(
    gateway: Gateway, db: str, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed read of the common ancestor showed the diffs against the winner, the
    ancestor "not available", as if CouchDB had compacted it."""
    base = {"type": "data_record", "v": 1}
    for revs, v in ((["1-aaa"], 1), (["2-bbb", "1-aaa"], 2), (["2-ccc", "1-aaa"], 3)):
        doc = {**base, "_id": "shared", "_rev": revs[0], "v": v,
               "_revisions": {"start": len(revs), "ids": [r.split("-")[1] for r in revs]}}  # fmt: skip
        status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": [doc], "new_edits": False})
        assert status == 201, body
    admin = basic(backend.admin_user, backend.admin_password)
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/shared", auth=admin)
    assert status == 200 and body["ancestor"]["available"] is True, body
    spoiling(gateway, monkeypatch, answering("GET", "/shared", 500, rev=True))
    status, body, _ = await gateway.call("GET", f"/{db}/_couchgate/conflicts/shared", auth=admin)
    assert_couch_error(status, body, 502, "bad_gateway")
