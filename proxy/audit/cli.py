"""`couchgate audit tail [--follow] [--user U] [--doc ID] [--limit N]` and
`couchgate audit verify`: read the audit database directly as the service account."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from proxy.audit.chain import verify
from proxy.audit.query import AuditQuery, search
from proxy.audit.retention import MARKER_PREFIX
from proxy.couch.client import CouchClient, new_session
from proxy.settings import Settings, SettingsError, load_settings

PAGE = 2000


@asynccontextmanager
async def couch_client(settings: Settings) -> AsyncIterator[CouchClient]:
    session = new_session(settings)
    try:
        yield CouchClient(session, settings)
    finally:
        await session.close()


async def all_entries(couch: CouchClient, db: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every entry and every retention marker, paged through `_all_docs`."""
    entries: list[dict[str, Any]] = []
    markers: dict[str, int] = {}
    start: str | None = None
    path = f"/{quote(db, safe='')}/_all_docs"
    while True:
        params = {"include_docs": "true", "limit": str(PAGE + 1)}
        if start is not None:
            params["startkey"] = f'"{start}"'
        result = await couch.json("GET", path, params=params)
        rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
        for row in rows[:PAGE]:
            doc = row.get("doc") or {}
            if doc.get("type") == "couchgate-audit":
                entries.append(doc)
            elif str(doc.get("_id", "")).startswith(MARKER_PREFIX):
                markers[str(doc["writer"])] = int(doc["removed_up_to"])
        if len(rows) <= PAGE:
            return entries, markers
        start = rows[PAGE]["id"]


async def run_verify(settings: Settings, console: Console) -> int:
    async with couch_client(settings) as couch:
        entries, markers = await all_entries(couch, settings.audit_db)
    breaks = verify(entries, markers)
    writers = len({e.get("writer") for e in entries})
    if not breaks:
        console.print(f"[green]audit log intact[/green]: {len(entries)} entries from {writers} writers")
        return 0
    for problem in breaks:
        console.print(f"[red]break[/red] {problem}")
    console.print(f"[red]{len(breaks)} breaks[/red] in {len(entries)} entries")
    return 1


def render(entries: list[dict[str, Any]]) -> Table:
    table = Table("time", "user", "action", "outcome", "doc", "rev", "reason")
    for e in entries:
        cells = (
            e.get("time"),
            e.get("user"),
            e.get("action"),
            e.get("outcome"),
            e.get("doc_id") or e.get("path"),
            e.get("rev_after"),
            e.get("reason"),
        )
        table.add_row(*("-" if c is None else str(c) for c in cells))
    return table


async def run_tail(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    query = AuditQuery(user=args.user, doc_id=args.doc, limit=args.limit)
    async with couch_client(settings) as couch:
        answer = await search(couch, settings.audit_db, query)
        entries = list(reversed(answer["entries"]))
        console.print(render(entries))
        seen = {e["_id"] for e in entries}
        while args.follow:
            await asyncio.sleep(args.interval)
            fresh = [
                e
                for e in reversed((await search(couch, settings.audit_db, query))["entries"])
                if e["_id"] not in seen
            ]
            if fresh:
                seen.update(e["_id"] for e in fresh)
                console.print(render(fresh))
    return 0


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="read and verify the audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    tail = commands.add_parser("tail", help="the newest entries, optionally following new ones")
    tail.add_argument("--user")
    tail.add_argument("--doc")
    tail.add_argument("--limit", type=int, default=20)
    tail.add_argument("--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=2.0)
    tail.set_defaults(func=main)
    check = commands.add_parser("verify", help="check every writer's hash chain; exit 1 on a break")
    check.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"couchgate: {exc}")
        return 2
    try:
        if args.audit_command == "verify":
            return asyncio.run(run_verify(settings, console))
        return asyncio.run(run_tail(settings, args, console))
    except KeyboardInterrupt:
        return 130
