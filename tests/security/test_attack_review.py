"""Findings of an attacker's review (forwarding wing, fail-closed reads, since tokens,
audit). Each test shows one hole seen working against the real test backend."""

from __future__ import annotations

import gzip
import hashlib
import logging

import orjson
import pytest

from proxy.devserver.backend import PouchServer

from offline_data import CHW1_LINE, auth, person, report
from support import Gateway

CHW1 = auth("chw1")
CLERK = auth("clerk")  # an online member of the database, not an admin


async def test_couchgates_own_local_docs_are_not_written_or_read_through_bulk_routes(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """The guard refuses `PUT/GET/DELETE /db/_local/couchgate...` to non-admins, but an
    online member reaches the same docs by naming them in a body: `_bulk_docs` and
    `POST /db` write them, `_bulk_get` reads them. A ledger id is an unkeyed hash of the
    user name, so a member can overwrite any offline user's removals ledger."""
    ledger = f"_local/couchgate-ledger~{hashlib.sha256(b'chw1').hexdigest()[:32]}"
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CLERK, json={"docs": [{"_id": ledger, "docs": {}, "planted": 1}]}
    )
    assert status == 403, body
    status, body, _ = await gw.call(
        "POST", f"/{medic}", auth=CLERK, json={"_id": "_local/couchgate-instance", "instance": "planted"}
    )
    assert status == 403, body
    assert backend.request("GET", f"/{medic}/{ledger}")[1].get("planted") is None
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get", auth=CLERK, json={"docs": [{"id": "_local/couchgate-instance"}]}
    )
    assert status == 403 or "instance" not in str(body), body


async def test_a_report_judged_beside_a_contact_couchdb_refused_is_not_written(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """Docs of one `_bulk_docs` are judged with the others applied, but a sibling CouchDB
    then refuses (here a new contact sent with a made-up `_rev`: a conflict) is still
    counted: the report about it is written, keyed to an id nobody holds, and its own
    writer cannot read it (a write outside the writer's scope, which W1 forbids). Whoever
    later holds that id (a contact created elsewhere, a future user's
    `org.couchdb.user:<name>`) receives the planted report."""
    ghost = {**person("ghost", "house1", "area1", "hc1", "district1"), "_rev": "1-bogus"}
    planted = report("r_ghost", CHW1_LINE, patient_uuid="ghost")
    status, rows, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [ghost, planted]}
    )
    assert status == 201, rows
    assert rows[0]["error"] == "conflict", rows
    written = backend.request("GET", f"/{medic}/r_ghost")[0] == 200
    readable = (await gw.call("GET", f"/{medic}/r_ghost", auth=CHW1))[0] == 200
    assert not written or readable, (rows, "written, yet outside its writer's scope")


async def test_a_compressed_body_is_judged_and_written_as_it_was_read(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """couchgate reads a gzip body decoded (aiohttp decodes it); it used to forward the
    `Content-Encoding` header with the decoded body, so a body gzipped twice was judged as
    unreadable bytes and decoded again, into docs, by the backend."""
    doc = {"docs": [{"_id": "zipped", "type": "data_record", "form": "x"}]}
    once = gzip.compress(orjson.dumps(doc))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, rows, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CLERK, data=once, headers=headers)
    assert status == 201 and rows[0]["ok"], rows  # once: read, judged and written as sent
    twice = gzip.compress(gzip.compress(orjson.dumps({"docs": [{"_id": "zipped-twice", "form": "x"}]})))
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CLERK, data=twice, headers=headers)
    assert status >= 400, body
    assert backend.request("GET", f"/{medic}/zipped-twice")[0] == 404


async def test_a_body_that_is_not_the_gzip_it_claims_is_a_400_not_a_500(gw: Gateway, medic: str) -> None:
    """aiohttp decodes a `Content-Encoding: gzip` body as the handler reads it; a body that
    is not the gzip it claims made that read raise, and the handler's answer was a 500,
    also on the token route, which anyone may call without credentials."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    fake = b"this is not gzip at all"
    broken = gzip.compress(orjson.dumps({"docs": [{"_id": "half", "pad": "p" * 200_000}]}))[:-40] + b"x" * 40
    for method, path, who, data in (
        ("POST", f"/{medic}/_bulk_docs", CHW1, fake),
        ("POST", f"/{medic}/_bulk_docs", CHW1, broken),
        ("PUT", f"/{medic}/not-gzip", CHW1, fake),
        ("POST", "/_couchgate/token", None, fake),
        ("POST", "/_session", None, fake),
    ):
        status, body, _ = await gw.call(method, path, auth=who, data=data, headers=headers)
        assert status == 400, (path, status, body)
        # A stream cut short decodes to what it held: then it is the JSON that is bad.
        assert body["error"] == "bad_request", (path, body)
        assert data is broken or "encoding" in body["reason"].lower(), (path, body)


async def test_a_lying_body_no_handler_reads_is_dropped_without_an_error(
    gw: Gateway, medic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A route that answers without reading the body (a 401 before it, a GET) left aiohttp
    to drain it after the answer, where the decode failed and was logged as an unhandled
    error with its traceback: one per request, for anyone, without credentials."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    fake = b"\x1f\x8b\x08\x00 this is not gzip" + b"x" * 64
    for method, path, who, expected in (
        ("POST", f"/{medic}/_bulk_docs", None, 401),
        ("GET", f"/{medic}/_all_docs", CHW1, 200),
    ):
        with caplog.at_level(logging.INFO):
            status, body, _ = await gw.call(method, path, auth=who, data=fake, headers=headers)
        assert status == expected, (path, status, body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "dropped a request body that does not decode" in caplog.text
