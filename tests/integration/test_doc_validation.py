"""Docs CouchDB refuses (or fails on) are refused by couchgate first, for every caller kind,
on both backends: no client body comes back as a 5xx, and the backend stays up."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from proxy.devserver.backend import PouchServer

from offline_data import DOCS, PASSWORD, USERS, auth
from real_couchdb import real_couchdb
from support import ON_COUCHDB, Gateway, basic, gateway_settings, start_gateway, stop_gateway

R32 = "a" * 32
BAD: dict[str, dict[str, Any]] = {
    "bogus member": {"_bogus": 1},
    "access member": {"_access": ["x"]},
    "attachments not an object": {"_attachments": "x"},
    "attachment not an object": {"_attachments": {"f": "x"}},
    "attachment bad base64": {"_attachments": {"f": {"content_type": "text/plain", "data": "!!!"}}},
    "attachment without data": {"_attachments": {"f": {"content_type": "text/plain"}}},
    "attachment data a number": {"_attachments": {"f": {"content_type": "text/plain", "data": 5}}},
    "attachment content_type a number": {"_attachments": {"f": {"content_type": 5, "data": "YQ=="}}},
    "attachment unpadded base64": {"_attachments": {"f": {"content_type": "text/plain", "data": "YQ"}}},
    "attachment base64 with spaces": {
        "_attachments": {"f": {"content_type": "text/plain", "data": "Y Q= ="}}
    },
    "attachment follows": {"_attachments": {"f": {"follows": True, "length": 3}}},
    "stub with odd encoding": {"_attachments": {"f": {"stub": True, "encoding": "zzz", "length": 1}}},
    "stub with bad digest": {"_attachments": {"f": {"stub": True, "digest": "md5-!!!", "length": 1}}},
    "stub with length text": {"_attachments": {"f": {"stub": True, "length": "x"}}},
    "attachment revpos text": {
        "_attachments": {"f": {"content_type": "text/plain", "data": "YQ==", "revpos": "x"}}
    },
    "deleted not a boolean": {"_deleted": "yes"},
    "rev not a rev": {"_rev": "bogus"},
    "rev a number": {"_rev": 5},
    "rev with non-hex 32": {"_rev": "1-" + "z" * 32},
    "revisions empty": {"_rev": f"1-{R32}", "_revisions": {}},
    "revisions a string": {"_revisions": "x"},
    "revisions start text": {"_rev": f"1-{R32}", "_revisions": {"start": "1", "ids": [R32]}},
    "revisions ids text": {"_rev": f"1-{R32}", "_revisions": {"start": 1, "ids": "x"}},
    "revisions id a number": {"_rev": f"1-{R32}", "_revisions": {"start": 1, "ids": [5]}},
    "revisions longer than start": {"_rev": f"1-{R32}", "_revisions": {"start": 1, "ids": [R32, "b" * 32]}},
    "revisions against rev": {"_rev": f"1-{R32}", "_revisions": {"start": 3, "ids": ["b" * 32]}},
    "revisions negative": {"_rev": f"1-{R32}", "_revisions": {"start": -1, "ids": [R32]}},
}
BAD_IDS: list[Any] = [5, "", "_foo", "_design/", None]


@pytest.fixture(scope="module")
def couchdb(backend: Any) -> Iterator[Any]:
    if ON_COUCHDB:  # this run's own backend is one
        yield backend
        return
    with real_couchdb() as server:
        yield server


@pytest.fixture(params=["pouchdb-server", "couchdb"])
def any_backend(request: pytest.FixtureRequest, backend: PouchServer) -> Any:
    if request.param == "pouchdb-server" and ON_COUCHDB:
        pytest.skip("this run's backend is CouchDB: the couchdb case covers it")
    return backend if request.param == "pouchdb-server" else request.getfixturevalue("couchdb")


@pytest.fixture
async def gateway(any_backend: Any) -> AsyncIterator[Gateway]:
    """couchgate in front of a `medic` of the offline users' data on the given backend."""
    db = f"medic-{uuid.uuid4().hex[:10]}"
    assert any_backend.request("PUT", f"/{db}")[0] in (201, 202)
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["chw", "member"]}}
    assert any_backend.request("PUT", f"/{db}/_security", security)[0] == 200
    status, body = any_backend.request("POST", f"/{db}/_bulk_docs", {"docs": [dict(d) for d in DOCS]})
    assert status == 201, body
    for name, fields in {**USERS, "online": {"roles": ["member"]}}.items():
        user = {"_id": f"org.couchdb.user:{name}", "name": name, "password": PASSWORD.format(name),
                "type": "user", **fields}  # fmt: skip
        assert any_backend.request("PUT", f"/_users/org.couchdb.user:{name}", user)[0] in (201, 202, 409)
    gw = await start_gateway(gateway_settings(any_backend, db))  # type: ignore[arg-type]
    try:
        yield gw
    finally:
        await stop_gateway(gw)
        any_backend.request("DELETE", f"/{db}")


def report(doc_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"_id": doc_id, "type": "data_record", "form": "v", "fields": {"patient_id": "1001"},
            "contact": {"_id": "chw1_person", "parent": {"_id": "area1"}}, **extra}  # fmt: skip


def cases() -> list[tuple[str, dict[str, Any]]]:
    made = [(name, report(f"bad-{i}", extra)) for i, (name, extra) in enumerate(BAD.items())]
    for doc_id in BAD_IDS:
        doc = report("x", {})
        if doc_id is None:
            del doc["_id"]
            made.append(("replicated doc without _id", doc))
        else:
            doc["_id"] = doc_id
            made.append((f"_id {doc_id!r}", doc))
    return made


async def test_no_bad_doc_is_a_server_error_for_any_caller(gateway: Gateway, any_backend: Any) -> None:
    db = gateway.settings.db
    callers = {"offline": auth("chw1"), "online": basic("online", PASSWORD.format("online")),
               "admin": basic(any_backend.admin_user, any_backend.admin_password)}  # fmt: skip
    good = report("good-one", {})
    problems = []
    for name, doc in cases():
        for who, credentials in callers.items():
            for new_edits in (True, False):
                if new_edits is False and "_rev" not in doc and "_revisions" not in doc and "_id" in doc:
                    continue  # a replicated doc needs a rev: its own case above
                if new_edits and "_id" not in doc:
                    continue  # a new doc without _id is fine: CouchDB names it
                other = (
                    good if new_edits else {**good, "_id": f"good-{uuid.uuid4().hex[:6]}", "_rev": f"1-{R32}"}
                )
                body = {"docs": [doc, other], "new_edits": new_edits}
                status, answer, _ = await gateway.call(
                    "POST", f"/{db}/_bulk_docs", auth=credentials, json=body
                )
                if status >= 500:
                    problems.append((name, who, "_bulk_docs", new_edits, status, answer))
                elif who == "offline" and status == 201:
                    # Offline users: the bad doc gets a row of its own, the good one is still judged.
                    rows = [
                        r
                        for r in answer
                        if r.get("error") in ("doc_validation", "bad_request", "illegal_docid")
                    ]
                    if len(rows) != 1:
                        problems.append((name, who, "_bulk_docs rows", new_edits, status, answer))
                elif status != 400:
                    problems.append((name, who, "_bulk_docs", new_edits, status, answer))
            if isinstance(doc.get("_id"), str) and doc["_id"] and not doc["_id"].startswith("_"):
                status, answer, _ = await gateway.call(
                    "PUT", f"/{db}/{doc['_id']}", auth=credentials, json=doc
                )
                if status >= 500:
                    problems.append((name, who, "PUT", None, status, answer))
            status, answer, _ = await gateway.call("POST", f"/{db}", auth=credentials, json=doc)
            if status >= 500:
                problems.append((name, who, "POST", None, status, answer))
        status, answer, _ = await gateway.call(
            "POST", f"/{db}/_couchgate/import", auth=callers["admin"], data=orjson.dumps([doc]),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        # An import drops revision fields (`_rev`, `_revisions`): only the rest can be invalid.
        expected = ("created", "invalid") if name.startswith(("rev", "_id", "replicated")) else ("invalid",)
        if status >= 500 or (status == 200 and answer["results"][0]["status"] not in expected):
            problems.append((name, "admin", "import", None, status, answer))
    assert [p[:5] for p in problems] == [], problems[:2]
    # The backend is still up and the good docs were written.
    status, _ = any_backend.request("GET", f"/{db}/good-one")
    assert status == 200
