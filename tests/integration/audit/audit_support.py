"""Helpers of the audit log tests: a gateway with its own audit database, reading entries
back through the API and straight from the backend."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlparse

from proxy.audit.chain import Break, ChainChecker
from proxy.audit.cli import chain_entries, retention_markers
from proxy.audit.log import BATCH_TYPE
from proxy.devserver.backend import PouchServer
from proxy.keys import AUDIT, COUCH

from support import Gateway, audit_entries, basic
from support import audit_settings as audit_settings  # re-exported for the audit tests


def admin(backend: PouchServer) -> str:
    return basic(backend.admin_user, backend.admin_password)


async def page(gw: Gateway, backend: PouchServer, path: str) -> dict[str, Any]:
    status, body, _ = await gw.call("GET", path, auth=admin(backend))
    assert status == 200, body
    assert isinstance(body, dict)
    return body


entries = audit_entries  # newest first, as an admin reads them through the API


async def oldest_first(gw: Gateway, backend: PouchServer, query: str = "") -> list[dict[str, Any]]:
    return list(reversed(await entries(gw, backend, query)))


def pick(rows: list[dict[str, Any]], *fields: str) -> list[tuple[Any, ...]]:
    return [tuple(row.get(f) for f in fields) for row in rows]


def batch_docs(backend: PouchServer, audit_db: str) -> list[dict[str, Any]]:
    """Every batch doc in the audit database, read directly (not through couchgate)."""
    _, body = backend.request("GET", f"/{audit_db}/_all_docs?include_docs=true")
    assert isinstance(body, dict), body
    return [r["doc"] for r in body["rows"] if r["doc"].get("type") == BATCH_TYPE]


def stored(backend: PouchServer, audit_db: str) -> list[dict[str, Any]]:
    """Every entry in the audit database, read directly from its batch docs."""
    return [entry for doc in batch_docs(backend, audit_db) for entry in doc["entries"]]


def rewrite_batch(
    backend: PouchServer, audit_db: str, seq: int, change: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Tamper with the batch doc holding entry `seq`: `change` edits its entries in place;
    a batch left with none is deleted."""
    [doc] = [d for d in batch_docs(backend, audit_db) if any(e["seq"] == seq for e in d["entries"])]
    change(doc["entries"])
    if doc["entries"]:
        status, _ = backend.request("PUT", f"/{audit_db}/{quote(doc['_id'], safe='')}", doc)
    else:
        status, _ = backend.request("DELETE", f"/{audit_db}/{quote(doc['_id'], safe='')}?rev={doc['_rev']}")
    assert status in (200, 201), status


def remove_entry(backend: PouchServer, audit_db: str, seq: int) -> None:
    def without(entries: list[dict[str, Any]]) -> None:
        entries[:] = [e for e in entries if e["seq"] != seq]

    rewrite_batch(backend, audit_db, seq, without)


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
