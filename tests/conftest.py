"""Fixtures shared by every test: a real backend and couchgate on real ports.

The backend is an embedded pouchdb-server, or the Apache CouchDB that
`COUCHGATE_TEST_COUCH_URL` names (`http://admin:pass@127.0.0.1:5984`, a server admin's
credentials in the URL). A test that holds only on one of them says so with
`@pytest.mark.backend("pouchdb-server" | "couchdb", reason=...)`: elsewhere it is skipped
with that reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from proxy.devserver.backend import Backend, CouchServer, PouchServer

from offline_data import DOCS, PASSWORD, USERS, auth
from support import (
    BACKEND_KIND,
    MEMBER_ROLE,
    TEST_COUCH_URL,
    Gateway,
    TestUser,
    delete_user,
    gateway_settings,
    put_user,
    start_gateway,
    stop_gateway,
)


def pytest_report_header() -> str:
    where = CouchServer.at(TEST_COUCH_URL).url if TEST_COUCH_URL else "embedded, started by the tests"
    return f"backend: {BACKEND_KIND} ({where})"


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("backend"):
        if BACKEND_KIND not in mark.args:
            pytest.skip(f"{'/'.join(mark.args)} only: {mark.kwargs.get('reason', '')}")


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    """One backend for the session; each test uses databases of its own."""
    with CouchServer.at(TEST_COUCH_URL) if TEST_COUCH_URL else PouchServer() as server:
        yield server


@pytest.fixture(scope="session")
def users(backend: Backend) -> dict[str, TestUser]:
    """`alice` is a member of every test database, `mallory` of none."""
    made = {
        "alice": TestUser("alice", "alice-pass", (MEMBER_ROLE,)),
        "mallory": TestUser("mallory", "mallory-pass", ("stranger",)),
    }
    for user in made.values():
        put_user(backend, {"name": user.name, "password": user.password, "roles": list(user.roles)})
    return made


@pytest.fixture
def fresh_user(backend: Backend) -> Iterator[TestUser]:
    """A member of the test databases of its own, for tests that send wrong passwords:
    CouchDB 3.4 locks an account out after 5 failed logins in 5 minutes from one address,
    and every test client comes from 127.0.0.1."""
    user = TestUser(f"u-{uuid.uuid4().hex[:10]}", "fresh-pass", (MEMBER_ROLE,))
    put_user(backend, {"name": user.name, "password": user.password, "roles": list(user.roles)})
    yield user
    delete_user(backend, user.name)


@pytest.fixture
def db(backend: Backend, users: dict[str, TestUser]) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    status, body = backend.request("PUT", f"/{name}")
    assert status == 201, body
    security = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": [MEMBER_ROLE]}}
    status, body = backend.request("PUT", f"/{name}/_security", security)
    assert status == 200, body
    yield name
    backend.request("DELETE", f"/{name}")


@pytest.fixture
async def gateway(backend: Backend, db: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(backend, db))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


# -- offline users: the hand-made CHT tree of tests/offline_data.py ----------------------


@pytest.fixture(scope="session")
def offline_users(backend: Backend) -> dict[str, str]:
    for name, fields in USERS.items():
        put_user(backend, {"name": name, "password": PASSWORD.format(name), **fields})
    return {name: auth(name) for name in USERS}


def load(backend: Backend, db: str, docs: list[dict[str, Any]]) -> None:
    status, body = backend.request("POST", f"/{db}/_bulk_docs", {"docs": docs})
    assert status == 201 and all("error" not in r for r in body), body


@pytest.fixture
def medic(backend: Backend, offline_users: dict[str, str]) -> Iterator[str]:
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
async def gw(backend: Backend, medic: str) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(gateway_settings(backend, medic, auth_cache_seconds=0.5))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
