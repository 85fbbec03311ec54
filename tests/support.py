"""Helpers for tests: couchgate on a real port and the CouchDB error-shape check."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import yarl
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from proxy.app import create_app
from proxy.devserver.backend import Backend, CouchServer, PouchServer
from proxy.edge import EdgeRunner
from proxy.keys import INDEX
from proxy.settings import Settings, load_settings

JWT_SECRET = "test-secret-" + "x" * 40
# The backend of this run (see conftest.py): a CouchDB named here, else embedded pouchdb-server.
TEST_COUCH_URL = os.environ.get("COUCHGATE_TEST_COUCH_URL", "")
BACKEND_KIND = CouchServer.kind if TEST_COUCH_URL else PouchServer.kind
ON_COUCHDB = CouchServer.kind == BACKEND_KIND
MEMBER_ROLE = "member"


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def put_user(backend: Backend, fields: dict[str, Any]) -> None:
    """Create or reset a `_users` doc: a CouchDB the tests did not start may hold it from an
    earlier run, changed by a test (a new password, other roles)."""
    doc_id = f"org.couchdb.user:{fields['name']}"
    doc = {"_id": doc_id, "type": "user", **fields}
    status, body = backend.request("PUT", f"/_users/{doc_id}", doc)
    if status == 409:
        _, current = backend.request("GET", f"/_users/{doc_id}")
        assert isinstance(current, dict), current
        status, body = backend.request("PUT", f"/_users/{doc_id}", {**doc, "_rev": current["_rev"]})
    assert status == 201, body


def delete_user(backend: Backend, name: str) -> None:
    """Remove a `_users` doc a test made: the users of the backend are shared by every test
    of a run (the users-at-risk count reads them all)."""
    doc_id = f"/_users/org.couchdb.user:{name}"
    _, current = backend.request("GET", doc_id)
    if isinstance(current, dict) and "_rev" in current:
        backend.request("DELETE", f"{doc_id}?rev={current['_rev']}")


@dataclass(frozen=True)
class TestUser:
    __test__ = False
    name: str
    password: str
    roles: tuple[str, ...]

    @property
    def auth(self) -> str:
        return basic(self.name, self.password)


def gateway_settings(backend: PouchServer, db: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "couch_url": backend.url,
        "couch_user": backend.admin_user,
        "couch_password": backend.admin_password,
        "db": db,
        "jwt_secret": JWT_SECRET,
        "auth_cache_seconds": 2.0,
        "log_json": False,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Gateway:
    """couchgate on a real port, and a client session that talks to it."""

    url: str
    settings: Settings
    http: aiohttp.ClientSession
    server: TestServer

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        raw_path: bool = False,
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        """One request; `raw_path` sends the path exactly as written (no client normalising)."""
        hdrs = {"Accept": "application/json", **(headers or {})}
        if auth is not None:
            hdrs["Authorization"] = auth
        if json is not None:
            data = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        url = yarl.URL(self.url + path, encoded=True) if raw_path else self.url + path
        async with self.http.request(method, url, data=data, headers=hdrs) as resp:
            raw = await resp.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw
            return resp.status, body, resp.headers


class GatewayServer(TestServer):
    """A test server with couchgate's edge rules, as `couchgate serve` runs it."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return EdgeRunner(self.app, **kwargs)


async def start_gateway(settings: Settings) -> Gateway:
    server = GatewayServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    return Gateway(f"http://127.0.0.1:{server.port}", settings, http, server)


async def stop_gateway(gw: Gateway) -> None:
    await gw.http.close()
    await gw.server.close()


def audit_settings(backend: PouchServer, db: str, **extra: Any) -> Settings:
    """Settings with the audit log writing, fast, to an audit database of its own."""
    values = {"audit_db": f"audit-{uuid.uuid4().hex[:10]}", "audit_flush_interval": 0.05, **extra}
    return gateway_settings(backend, db, **values)


@asynccontextmanager
async def audited_gateway(backend: PouchServer, db: str, **extra: Any) -> AsyncIterator[Gateway]:
    """couchgate with the audit log on; its audit database is removed afterwards."""
    gw = await start_gateway(audit_settings(backend, db, **extra))
    try:
        yield gw
    finally:
        await stop_gateway(gw)
        backend.request("DELETE", f"/{gw.settings.audit_db}")


async def audit_entries(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    """Entries newest first, as an admin reads them through the API (one page of 1000)."""
    admin = basic(backend.admin_user, backend.admin_password)
    status, body, _ = await gw.call("GET", f"/_couchgate/audit?limit=1000{query}", auth=admin)
    assert status == 200, body
    assert body["next"] is None, "more than 1000 entries: the test reads only the first page"
    return list(body["entries"])


async def eventually(check: Any, within: float = 10.0, step: float = 0.05) -> bool:
    """Poll an async predicate until it holds or the time is up (no fixed sleeps in tests)."""
    for _ in range(max(1, int(within / step))):
        if await check():
            return True
        await asyncio.sleep(step)
    return bool(await check())


async def index_level(gw: Gateway, backend: PouchServer, db: str) -> None:
    """Wait until the gateway's scope index holds every change the database holds now."""
    _, info = backend.request("GET", f"/{db}")
    target = int(str(info["update_seq"]).split("-", 1)[0])
    sync = gw.server.app[INDEX]

    async def level() -> bool:
        return sync.built.is_set() and int(str(sync.since).split("-", 1)[0]) >= target

    assert await eventually(level, within=30), f"the index did not reach seq {target}"


def assert_couch_error(status: int, body: Any, expected_status: int, error: str | None = None) -> None:
    """Every error couchgate answers is CouchDB-shaped: {"error", "reason"}."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("reason"), str), body
    if error is not None:
        assert body["error"] == error, body
    text = orjson.dumps(body).decode()
    assert "Traceback" not in text and "http://127.0.0.1" not in text, body
