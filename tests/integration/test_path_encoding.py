"""Names reach the backend exactly as the client meant them: every reserved character in
database names, doc ids, attachment names and `_local` ids, through couchgate, against the
backend of the run (CouchDB decodes a raw `+` in a path as a space, so couchgate must never
forward a `+` it decoded from `%2B` unescaped)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from proxy.devserver.backend import PouchServer

from offline_data import auth, lineage
from support import ON_COUCHDB, Gateway, TestUser, basic

# Every printable ASCII character that is not a letter or digit, a few non-ASCII ones, and
# sequences that look encoded already.
SPECIAL = [chr(c) for c in range(0x20, 0x7F) if not chr(c).isalnum()] + [
    "é",
    "ü",
    "€",
    "😀",
    "%2B",
    "%20",
    "+%",
]
# What PouchDB's http adapter sends (encodeURIComponent), and everything escaped.
ENCODINGS = {"pouchdb": "!'()*-._~", "strict": ""}


def names(prefix: str) -> list[str]:
    return [f"{prefix}{c}z" for c in SPECIAL]


def ids_in(backend: PouchServer, db: str, query: str = "") -> set[str]:
    status, body = backend.request("GET", f"/{quote(db, safe='')}/_all_docs{query}")
    assert status == 200, body
    assert isinstance(body, dict)
    return {row["id"] for row in body["rows"]}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_doc_ids_reach_the_backend_exactly(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer, encoding: str
) -> None:
    alice = users["alice"].auth
    wanted = names("d")
    for doc_id in wanted:
        path = f"/{db}/{quote(doc_id, safe=ENCODINGS[encoding])}"
        status, body, _ = await gateway.call("PUT", path, auth=alice, json={"v": 1}, raw_path=True)
        assert status == 201 and body["id"] == doc_id, (doc_id, status, body)
        status, body, _ = await gateway.call("GET", path, auth=alice, raw_path=True)
        assert status == 200 and body["_id"] == doc_id, (doc_id, status, body)
    assert ids_in(backend, db) == set(wanted)


async def test_a_raw_plus_is_a_space_as_couchdb_reads_it(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    """CouchDB decodes a path's `+` as a space; couchgate decides on, and forwards, that
    same id (on pouchdb-server too, which on its own would keep the `+`)."""
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/a+b", auth=alice, json={}, raw_path=True)
    assert status == 201 and body["id"] == "a b", body
    status, body, _ = await gateway.call("GET", f"/{db}/a%20b", auth=alice, raw_path=True)
    assert status == 200 and body["_id"] == "a b"
    assert ids_in(backend, db) == {"a b"}


async def test_attachment_names_reach_the_backend_exactly(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call("PUT", f"/{db}/holder", auth=alice, json={})
    rev = body["rev"]
    wanted = names("a")
    for name in wanted:
        path = f"/{db}/holder/{quote(name, safe=ENCODINGS['pouchdb'])}"
        headers = {"Content-Type": "text/plain"}
        data = name.encode()
        status, body, _ = await gateway.call(
            "PUT", f"{path}?rev={rev}", auth=alice, data=data, headers=headers, raw_path=True
        )
        assert status == 201, (name, status, body)
        rev = body["rev"]
        status, body, _ = await gateway.call("GET", path, auth=alice, raw_path=True)
        assert status == 200 and body == data, (name, status, body)
    status, doc = backend.request("GET", f"/{db}/holder")
    assert isinstance(doc, dict) and set(doc["_attachments"]) == set(wanted)


async def test_local_ids_reach_the_backend_exactly(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice = users["alice"].auth
    for local in names("l"):
        path = f"/{db}/_local/{quote(local, safe=ENCODINGS['pouchdb'])}"
        status, body, _ = await gateway.call("PUT", path, auth=alice, json={"at": local}, raw_path=True)
        assert status == 201 and body["id"] == f"_local/{local}", (local, status, body)
        status, stored = backend.request("GET", f"/{db}/_local/{quote(local, safe='')}")
        assert status == 200 and isinstance(stored, dict) and stored["at"] == local, (local, stored)


def stored_name(name: str) -> str:
    """pouchdb-server drops a `/` from a database's name (CouchDB keeps it)."""
    return name if ON_COUCHDB else name.replace("/", "")


async def test_database_names_reach_the_backend_exactly(gateway: Gateway, backend: PouchServer) -> None:
    admin = basic(backend.admin_user, backend.admin_password)
    base = f"t-{uuid.uuid4().hex[:8]}"
    wanted = [f"{base}{c}z" for c in "_$()+-/"]  # every character CouchDB allows in a name
    try:
        for name in wanted:
            path = f"/{quote(name, safe=ENCODINGS['pouchdb'])}"
            status, body, _ = await gateway.call("PUT", path, auth=admin, raw_path=True)
            assert status == 201, (name, status, body)
            status, body, _ = await gateway.call("PUT", f"{path}/doc", auth=admin, json={}, raw_path=True)
            assert status == 201, (name, status, body)
            status, body, _ = await gateway.call("GET", path, auth=admin, raw_path=True)
            assert status == 200 and body["db_name"] == stored_name(name), (name, body)
        status, listed = backend.request("GET", "/_all_dbs")
        assert isinstance(listed, list) and {stored_name(n) for n in wanted} <= set(listed)
        assert all(ids_in(backend, name) == {"doc"} for name in wanted)
    finally:
        for name in wanted:
            backend.request("DELETE", f"/{quote(name, safe='')}")


async def test_offline_users_doc_ids_and_checkpoints_keep_their_names(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    chw1 = auth("chw1")
    wanted = [f"r{c}z" for c in SPECIAL if c not in "/"]
    for doc_id in wanted:
        path = f"/{medic}/{quote(doc_id, safe=ENCODINGS['pouchdb'])}"
        report = {"type": "data_record", "form": "visit", "contact": lineage("chw1_person", "area1", "hc1", "district1"),
                  "fields": {"patient_id": "1001"}}  # fmt: skip
        status, body, _ = await gw.call("PUT", path, auth=chw1, json=report, raw_path=True)
        assert status == 201 and body["id"] == doc_id, (doc_id, status, body)
        status, body, _ = await gw.call("GET", path, auth=chw1, raw_path=True)
        assert status == 200 and body["_id"] == doc_id, (doc_id, status, body)
        local = f"/{medic}/_local/{quote(doc_id, safe=ENCODINGS['pouchdb'])}"
        status, body, _ = await gw.call("PUT", local, auth=chw1, json={"n": doc_id}, raw_path=True)
        assert status == 201 and body["id"] == f"_local/{doc_id}", (doc_id, status, body)
        status, body, _ = await gw.call("GET", local, auth=chw1, raw_path=True)
        assert status == 200 and body["n"] == doc_id and body["_id"] == f"_local/{doc_id}", (doc_id, body)
    assert set(wanted) <= ids_in(backend, medic)
