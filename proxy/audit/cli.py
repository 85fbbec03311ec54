"""`couchgate audit tail [--follow] [--user U] [--doc ID] [--limit N]` and
`couchgate audit verify [--checkpoint W:SEQ:HASH ...] [--checkpoints LOGFILE]`: read the
audit database directly as the service account.

`tail --follow` reads the audit database's `_changes` feed (each change a batch doc of
entries) from where the first page was taken, so a burst of any size is shown whole.
`verify` streams each writer's chain, entry by entry across its batch docs, through the
`chain` view, one page at a time: an edited entry fails its hash, a removed entry or batch
doc leaves a gap in seq; checkpoints (the `audit checkpoint` lines couchgate
logs) also reveal a writer's newest entries being deleted, which no chain can show alone.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import orjson
from rich.console import Console
from rich.table import Table

from proxy.audit.chain import ChainChecker, Checkpoint
from proxy.audit.log import BATCH_TYPE, DESIGN_ID
from proxy.audit.query import AuditQuery, search
from proxy.audit.retention import MARKER_PREFIX
from proxy.couch.client import CouchClient, new_session
from proxy.errors import UpstreamError
from proxy.settings import Settings, SettingsError, load_settings

PAGE = 2000


@asynccontextmanager
async def couch_client(settings: Settings) -> AsyncIterator[CouchClient]:
    session = new_session(settings)
    try:
        yield CouchClient(session, settings)
    finally:
        await session.close()


async def retention_markers(couch: CouchClient, db: str) -> dict[str, int]:
    """Per writer, the last seq retention removed on purpose."""
    params = {
        "startkey": orjson.dumps(MARKER_PREFIX).decode(),
        "endkey": orjson.dumps(MARKER_PREFIX + "\ufff0").decode(),
        "include_docs": "true",
    }
    result = await couch.json("GET", f"/{quote(db, safe='')}/_all_docs", params=params)
    if not result.ok or not isinstance(result.body, dict):
        raise UpstreamError(f"the audit database answered {result.status}")
    docs = [row.get("doc") or {} for row in result.body.get("rows", [])]
    return {str(d["writer"]): int(d["removed_up_to"]) for d in docs if "writer" in d}


async def chain_entries(couch: CouchClient, db: str) -> AsyncIterator[dict[str, Any]]:
    """Every entry in (writer, seq) order, across batch docs, a page at a time."""
    path = f"/{quote(db, safe='')}/{DESIGN_ID}/_view/chain"
    start: Any = None
    while True:
        params = {"limit": str(PAGE + 1)}
        if start is not None:
            params["startkey"] = orjson.dumps(start).decode()
        result = await couch.json("GET", path, params=params)
        if not result.ok or not isinstance(result.body, dict):
            hint = " (couchgate installs it when it starts)" if result.status == 404 else ""
            raise UpstreamError(f"the audit chain index answered {result.status}{hint}")
        rows = result.body.get("rows", [])
        for row in rows[:PAGE]:
            if isinstance(row.get("value"), dict):
                yield row["value"]
        if len(rows) <= PAGE:
            return
        start = rows[PAGE]["key"]


def parse_checkpoint(text: str) -> Checkpoint:
    writer, seq, digest = text.rsplit(":", 2)
    return Checkpoint(writer, int(seq), digest)


def checkpoints_from_log(lines: Iterable[str]) -> list[Checkpoint]:
    """The newest `audit checkpoint` of each writer in couchgate's JSON log lines."""
    newest: dict[str, Checkpoint] = {}
    for line in lines:
        if "audit_checkpoint" not in line:
            continue
        try:
            mark = orjson.loads(line)["audit_checkpoint"]
            checkpoint = Checkpoint(str(mark["writer"]), int(mark["seq"]), str(mark["hash"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if checkpoint.seq > newest.get(checkpoint.writer, Checkpoint("", 0, "")).seq:
            newest[checkpoint.writer] = checkpoint
    return list(newest.values())


async def verify_log(couch: CouchClient, db: str, checkpoints: Iterable[Checkpoint] = ()) -> ChainChecker:
    """Every writer's chain checked, entry by entry (`checker.breaks` lists what is wrong)."""
    checker = ChainChecker(await retention_markers(couch, db), checkpoints)
    async for entry in chain_entries(couch, db):
        checker.feed(entry)
    checker.finish()
    return checker


async def run_verify(settings: Settings, console: Console, checkpoints: Iterable[Checkpoint] = ()) -> int:
    async with couch_client(settings) as couch:
        checker = await verify_log(couch, settings.audit_db, checkpoints)
    breaks = checker.breaks
    entries, writers = checker.entries, len(checker.writers)
    if not breaks:
        console.print(f"[green]audit log intact[/green]: {entries} entries from {writers} writers")
        return 0
    for problem in breaks:
        console.print(f"[red]break[/red] {problem}")
    console.print(f"[red]{len(breaks)} breaks[/red] in {entries} entries")
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
    db = settings.audit_db
    async with couch_client(settings) as couch:
        since = await update_seq(couch, db)  # taken first: nothing written after it is missed
        answer = await search(couch, db, query)
        entries = list(reversed(answer["entries"]))
        console.print(render(entries))
        shown = {e.get("_id") for e in entries}
        while args.follow:
            since, fresh, more = await changes_since(couch, db, since, query)
            fresh = [e for e in fresh if e.get("_id") not in shown]
            if fresh:
                console.print(render(fresh))
            if not more:
                await asyncio.sleep(args.interval)
    return 0


async def update_seq(couch: CouchClient, db: str) -> Any:
    result = await couch.json("GET", f"/{quote(db, safe='')}")
    if not result.ok or not isinstance(result.body, dict):
        raise UpstreamError(f"the audit database answered {result.status}")
    return result.body.get("update_seq", 0)


async def changes_since(
    couch: CouchClient, db: str, since: Any, query: AuditQuery, batch: int = 20
) -> tuple[Any, list[dict[str, Any]], bool]:
    """Entries written after `since` that match `query`, the new since, and whether there is
    more. Each change is a batch doc of up to `batch_size` entries, hence the small `batch`."""
    params = {"since": since if isinstance(since, str) else orjson.dumps(since).decode(),
              "include_docs": "true", "limit": str(batch)}  # fmt: skip
    result = await couch.json("GET", f"/{quote(db, safe='')}/_changes", params=params)
    if not result.ok or not isinstance(result.body, dict):
        raise UpstreamError(f"the audit changes feed answered {result.status}")
    rows = result.body.get("results", [])
    docs = [row.get("doc") for row in rows if not row.get("deleted")]
    batches = [d for d in docs if isinstance(d, dict) and d.get("type") == BATCH_TYPE]
    entries = [e for d in batches if isinstance(d.get("entries"), list) for e in d["entries"]]
    fresh = [e for e in entries if isinstance(e, dict) and query.matches(e)]
    return result.body.get("last_seq", since), fresh, len(rows) >= batch


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
    check.add_argument("--checkpoint", action="append", default=[], metavar="WRITER:SEQ:HASH",
                       help="a logged checkpoint: entries up to it must be there (repeatable)")  # fmt: skip
    check.add_argument("--checkpoints", metavar="LOGFILE",
                       help="couchgate's JSON log: the newest checkpoint of each writer in it")  # fmt: skip
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
            checkpoints = [parse_checkpoint(c) for c in args.checkpoint]
            if args.checkpoints:
                with open(args.checkpoints, encoding="utf-8", errors="replace") as lines:
                    checkpoints += checkpoints_from_log(lines)
            return asyncio.run(run_verify(settings, console, checkpoints))
        return asyncio.run(run_tail(settings, args, console))
    except ValueError as exc:
        console.print(f"couchgate: a checkpoint is WRITER:SEQ:HASH ({exc})")
        return 2
    except UpstreamError as exc:
        console.print(f"couchgate: {exc.reason}")
        return 2
    except KeyboardInterrupt:
        return 130
