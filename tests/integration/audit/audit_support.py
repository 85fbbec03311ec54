"""Helpers of the audit log tests: a gateway with its own audit database, reading entries
back through the API and straight from the backend."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any
from urllib.parse import urlparse

from proxy.audit.chain import Break, ChainChecker
from proxy.audit.cli import chain_entries, retention_markers
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT, COUCH
from proxy.settings import Settings

from support import Gateway, basic, gateway_settings


def audit_settings(backend: PouchServer, db: str, **extra: Any) -> Settings:
    values = {"audit_db": f"audit-{uuid.uuid4().hex[:10]}", "audit_flush_interval": 0.05, **extra}
    return gateway_settings(backend, db, **values)


def admin(backend: PouchServer) -> str:
    return basic(backend.admin_user, backend.admin_password)


async def page(gw: Gateway, backend: PouchServer, path: str) -> dict[str, Any]:
    status, body, _ = await gw.call("GET", path, auth=admin(backend))
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def entries(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    """Entries newest first, as an admin reads them through the API."""
    body = await page(gw, backend, f"/_couchgate/audit?limit=1000{query}")
    assert body["next"] is None, "more than 1000 entries: the test reads only the first page"
    return list(body["entries"])


async def oldest_first(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    return list(reversed(await entries(gw, backend, query)))


def pick(rows: list[dict[str, Any]], *fields: str) -> list[tuple[Any, ...]]:
    return [tuple(row.get(f) for f in fields) for row in rows]


def stored(backend: PouchServer, audit_db: str) -> list[dict[str, Any]]:
    """Every entry in the audit database, read directly (not through couchgate)."""
    _, body = backend.request("GET", f"/{audit_db}/_all_docs?include_docs=true")
    assert isinstance(body, dict), body
    return [r["doc"] for r in body["rows"] if r["doc"].get("type") == "couchgate-audit"]


async def chain_breaks(gw: Gateway) -> list[Break]:
    """The hash chain as `couchgate audit verify` checks it, after a flush."""
    log = gw.server.app[AUDIT]
    assert await log.flush()  # type: ignore[attr-defined]
    couch, db = gw.server.app[COUCH], gw.settings.audit_db
    checker = ChainChecker(await retention_markers(couch, db))
    async for entry in chain_entries(couch, db):
        checker.feed(entry)
    return checker.finish()


def cli_env(backend: PouchServer, audit_db: str) -> dict[str, str]:
    """The environment `couchgate audit ...` reads its settings from."""
    return {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
            "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_AUDIT_DB": audit_db, "COLUMNS": "200"}  # fmt: skip


async def raw_request(gw: Gateway, request: bytes) -> bytes:
    """One HTTP/1.1 request written byte for byte (clients refuse to send invalid headers)."""
    url = urlparse(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
