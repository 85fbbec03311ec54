"""Fixtures shared by every test: a real pouchdb-server and couchgate on real ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer

from offline_data import DOCS, PASSWORD, USERS, auth
from support import MEMBER_ROLE, Gateway, TestUser, gateway_settings, start_gateway, stop_gateway


@pytest.fixture(scope="session")
def backend() -> Iterator[PouchServer]:
    """One pouchdb-server for the session; each test uses databases of its own."""
    with PouchServer() as server:
        yield server


@pytest.fixture(scope="session")
def users(backend: PouchServer) -> dict[str, TestUser]:
    """`alice` is a member of every test database, `mallory` of none."""
    made = {
        "alice": TestUser("alice", "alice-pass", (MEMBER_ROLE,)),
        "mallory": TestUser("mallory", "mallory-pass", ("stranger",)),
    }
    for user in made.values():
        status, body = backend.request(
            "PUT",
            f"/_users/org.couchdb.user:{user.name}",
            {"_id": f"org.couchdb.user:{user.name}", "name": user.name, "password": user.password,
             "roles": list(user.roles), "type": "user"},
        )  # fmt: skip
        assert status in (201, 409), body
    return made


@pytest.fixture
def db(backend: PouchServer, users: dict[str, TestUser]) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    status, body = backend.request("PUT", f"/{name}")
    assert status == 201, body
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": [MEMBER_ROLE]}}
    status, body = backend.request("PUT", f"/{name}/_security", security)
    assert status == 200, body
    yield name
    backend.request("DELETE", f"/{name}")


@pytest.fixture
async def gateway(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(backend, db))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


# -- offline users: the hand-made CHT tree of tests/offline_data.py ----------------------


@pytest.fixture(scope="session")
def offline_users(backend: PouchServer) -> dict[str, str]:
    for name, fields in USERS.items():
        status, body = backend.request(
            "PUT",
            f"/_users/org.couchdb.user:{name}",
            {
                "_id": f"org.couchdb.user:{name}",
                "name": name,
                "password": PASSWORD.format(name),
                "type": "user",
                **fields,
            },
        )
        assert status in (201, 409), body
    return {name: auth(name) for name in USERS}


def load(backend: PouchServer, db: str, docs: list[dict[str, Any]]) -> None:
    status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": docs})
    assert status == 201 and all("error" not in r for r in body), body


@pytest.fixture
def medic(backend: PouchServer, offline_users: dict[str, str]) -> Iterator[str]:
    name = f"medic-{uuid.uuid4().hex[:10]}"
    assert backend.request("PUT", f"/{name}")[0] == 201
    security = {
        "admins": {"names": [], "roles": []},
        "members": {"names": [], "roles": ["chw", "chw_supervisor", "data_entry"]},
    }
    assert backend.request("PUT", f"/{name}/_security", security)[0] == 200
    load(backend, name, [dict(d) for d in DOCS])
    yield name
    backend.request("DELETE", f"/{name}")


@pytest.fixture
async def gw(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(gateway_settings(backend, medic, auth_cache_seconds=0.5))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
