"""Issue 11, item 5, through offline users: the request shapes that kill a stock
pouchdb-server, sent by offline users to couchgate's own replication routes (which never
forward them raw). Run against a backend of their own: a failure must not take the
session's backend down with it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer

from offline_data import DOCS, PASSWORD, USERS, auth
from support import Gateway, gateway_settings, start_gateway, stop_gateway


def with_offline_users(server: PouchServer) -> PouchServer:
    for name, fields in USERS.items():
        doc = {"_id": f"org.couchdb.user:{name}", "name": name, "password": PASSWORD.format(name),
               "type": "user", **fields}  # fmt: skip
        assert server.request("PUT", f"/_users/org.couchdb.user:{name}", doc)[0] == 201
    return server


@pytest.fixture(scope="module")
def fragile() -> Iterator[PouchServer]:
    with PouchServer() as server:
        yield with_offline_users(server)


@pytest.fixture
def alone() -> Iterator[PouchServer]:
    """A backend for one test, whose request is known to kill it."""
    with PouchServer() as server:
        yield with_offline_users(server)


@pytest.fixture
async def offline(fragile: PouchServer) -> AsyncIterator[tuple[Gateway, str]]:
    async with offline_gateway(fragile) as pair:
        yield pair


@asynccontextmanager
async def offline_gateway(fragile: PouchServer) -> AsyncIterator[tuple[Gateway, str]]:
    db = f"medic-{uuid.uuid4().hex[:10]}"
    assert fragile.request("PUT", f"/{db}")[0] == 201
    members = {"admins": {"names": [], "roles": []},
               "members": {"names": [], "roles": ["chw", "chw_supervisor", "data_entry"]}}  # fmt: skip
    assert fragile.request("PUT", f"/{db}/_security", members)[0] == 200
    status, body = fragile.request("POST", f"/{db}/_bulk_docs", {"docs": [dict(d) for d in DOCS]})
    assert status == 201, body
    assert (
        fragile.request("PUT", f"/{db}/_design/f", {"filters": {"ok": "function (doc) { return true; }"}})[0]
        == 201
    )
    gw = await start_gateway(gateway_settings(fragile, db, auth_cache_seconds=0.5))
    try:
        yield gw, db
    finally:
        await stop_gateway(gw)
        with contextlib.suppress(OSError):
            fragile.request("DELETE", f"/{db}")


def assert_survived(backend: PouchServer, db: str, status: int, body: Any) -> None:
    assert backend._proc is not None and backend._proc.poll() is None, "the backend died"
    assert backend.request("GET", f"/{db}/p1")[0] == 200
    assert status < 500, (status, body)
    assert isinstance(body, (dict, list)), body


SHAPES: list[tuple[str, str, Any]] = [
    ("PUT", "/newdb-{u}", None),
    ("DELETE", "/{db}", None),
    ("POST", "/{db}/_revs_diff", {"p1": "1-abc"}),
    ("POST", "/{db}/_revs_diff", {"p1": 5}),
    ("GET", "/{db}/_changes?filter=x/y", None),
    ("GET", "/{db}/_changes?filter=f/nope", None),
    ("GET", "/{db}/_changes?filter=nope", None),
    ("GET", "/{db}/_changes?filter=_view", None),
    ("GET", "/{db}/_changes?filter=_view&view=x/y", None),
    ("GET", "/{db}/_changes?filter=_design", None),
    ("POST", "/{db}/_changes?filter=_selector", {"selector": {"type": "person"}}),
    ("GET", "/{db}/_changes?filter=_foo&feed=longpoll&timeout=100", None),
    ("GET", '/{db}/p1?open_revs=["1-abc"]&latest=true', None),
    ("GET", '/{db}/p1?open_revs=["1-abc"]&latest=1', None),
    ("POST", "/{db}/_bulk_get?latest=true", {"docs": [{"id": "p1", "rev": "1-abc"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), SHAPES, ids=lambda v: str(v))
async def test_offline_user_cannot_kill_the_backend(
    fragile: PouchServer, offline: tuple[Gateway, str], method: str, path: str, body: Any
) -> None:
    gw, db = offline
    status, answer, _ = await gw.call(
        method, path.format(db=db, u=uuid.uuid4().hex[:6]), auth=auth("chw1"), json=body
    )
    assert_survived(fragile, db, status, answer)


async def test_offline_bulk_get_with_latest_1_and_a_missing_revision(alone: PouchServer) -> None:
    async with offline_gateway(alone) as (gw, db):
        status, answer, _ = await gw.call(
            "POST",
            f"/{db}/_bulk_get?latest=1",
            auth=auth("chw1"),
            json={"docs": [{"id": "p1", "rev": "1-abc"}]},
        )
        assert_survived(alone, db, status, answer)
