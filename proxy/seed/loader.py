"""Load a demo data set into a CouchDB (or pouchdb-server) as its admin. Idempotent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from proxy.couch.client import basic_auth_header
from proxy.seed.generator import DemoData

# An explicit `_security`: CouchDB 3 makes new databases admin-only, pouchdb-server makes
# them public; members are the CHT roles, so a role-less user is refused by CouchDB itself.
SECURITY = {
    "admins": {"names": [], "roles": []},
    "members": {"names": [], "roles": ["chw", "chw_supervisor", "data_entry", "national_admin"]},
}


@dataclass
class LoadReport:
    docs_written: int = 0
    docs_existing: int = 0
    users_created: int = 0

    @property
    def docs_total(self) -> int:
        return self.docs_written + self.docs_existing


async def make_server_admin(http: aiohttp.ClientSession, base: str, name: str, password: str) -> None:
    """Add `name` to the server's admins: CouchDB 3's `/_node/_local/_config`, else the
    older `/_config` that pouchdb-server speaks. Setting it again only re-hashes it."""
    body = orjson.dumps(password)
    for config in ("/_node/_local/_config", "/_config"):
        async with http.put(f"{base}{config}/admins/{quote(name, safe='')}", data=body) as resp:
            if resp.status == 200:
                return
            if resp.status not in (400, 404):
                raise RuntimeError(f"cannot make {name} a server admin: {resp.status}")
    raise RuntimeError(f"cannot make {name} a server admin: no config endpoint")


async def restore_server_admins(couch_url: str, admin_user: str, admin_password: str, data: DemoData) -> None:
    """Make the demo's server admins admins again (after a backend restart that forgot them)."""
    headers = {"Authorization": basic_auth_header(admin_user, admin_password)}
    async with aiohttp.ClientSession(headers=headers, cookie_jar=aiohttp.DummyCookieJar()) as http:
        for user in data.users:
            if user.server_admin:
                await make_server_admin(http, couch_url.rstrip("/"), user.name, user.password)


def batches(docs: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while batch := list(itertools.islice(docs, size)):
        yield batch


async def load(
    couch_url: str,
    admin_user: str,
    admin_password: str,
    db: str,
    data: DemoData,
    *,
    batch_size: int = 1000,
    concurrency: int = 4,
) -> LoadReport:
    headers = {
        "Authorization": basic_auth_header(admin_user, admin_password),
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    base = couch_url.rstrip("/")
    db_url = f"{base}/{quote(db, safe='')}"
    report = LoadReport()
    async with aiohttp.ClientSession(headers=headers, cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.put(db_url) as resp:
            if resp.status not in (201, 202, 412):
                raise RuntimeError(f"cannot create {db}: {resp.status} {await resp.text()}")
        async with http.put(f"{db_url}/_security", data=orjson.dumps(SECURITY)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"cannot set _security on {db}: {resp.status}")
        for user in data.users:
            doc_url = f"{base}/_users/{quote(user.user_doc()['_id'], safe='')}"
            async with http.put(doc_url, data=orjson.dumps(user.user_doc())) as resp:
                if resp.status in (201, 202):
                    report.users_created += 1
                elif resp.status != 409:
                    raise RuntimeError(f"cannot create user {user.name}: {resp.status}")
            if user.server_admin:
                await make_server_admin(http, base, user.name, user.password)
        gate = asyncio.Semaphore(concurrency)

        async def write(batch: list[dict[str, Any]]) -> None:
            async with gate, http.post(f"{db_url}/_bulk_docs", data=orjson.dumps({"docs": batch})) as resp:
                rows = orjson.loads(await resp.read())
            if not isinstance(rows, list):
                raise RuntimeError(f"_bulk_docs failed: {rows}")
            for row in rows:
                if "error" not in row:
                    report.docs_written += 1
                elif row["error"] == "conflict":
                    report.docs_existing += 1
                else:
                    raise RuntimeError(f"cannot write {row.get('id')}: {row}")

        pending: set[asyncio.Task[None]] = set()
        for batch in batches(data.docs(), batch_size):
            if len(pending) >= concurrency * 2:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(write(batch)))
        for task in pending:
            await task
    return report
