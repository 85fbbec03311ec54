"""`couchgate audit tail [--follow] [--user U] [--doc ID] [--limit N]` and
`couchgate audit verify [--checkpoint W:SEQ:HASH ...] [--checkpoints LOGFILE]`: read the
audit database directly as the service account.

`tail --follow` reads the audit database's `_changes` feed (each change a batch doc of
entries) from where the first page was taken, so a burst of any size is shown whole.
`verify` streams each writer's chain, entry by entry across its batch docs, through the
`chain` view, one page at a time: an edited entry fails its hash, a removed entry or batch
doc leaves a gap in seq; checkpoints (the `audit checkpoint` lines couchgate
logs) also reveal a writer's newest entries being deleted, which no chain can show alone.
It then checks for gaps: every revision the database's `_changes` shows (each leaf of each
doc changed since the audit log began, `--since` to start elsewhere) must be accounted for
by an entry that says it was written, or by the intent stored before a write whose outcome
couchgate could not record (it stopped in between); any other is reported as a write with
no entry. couchgate's own design docs (`_design/couchgate-*`) are not checked.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import orjson
from rich.console import Console
from rich.table import Table

from proxy.audit.chain import ChainChecker, Checkpoint
from proxy.audit.log import BATCH_TYPE, DESIGN_ID, INTENTS_SUFFIX, START_PREFIX
from proxy.audit.query import AuditQuery, search
from proxy.audit.retention import MARKER_PREFIX
from proxy.couch.client import CouchClient, new_session
from proxy.couch.docs import Docs
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
    docs = Docs(couch, f"/{quote(db, safe='')}")
    what = "to a read of the audit database"
    return {
        str(d["writer"]): int(d["removed_up_to"])
        async for d in docs.scan(MARKER_PREFIX, MARKER_PREFIX + "\ufff0", what=what)
        if "writer" in d
    }


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


CHECKPOINT = re.compile(r"(.+):([0-9]{1,15}):([^:]+)")  # as openapi/openapi.yaml says


def parse_checkpoint(text: str) -> Checkpoint:
    """WRITER:SEQ:HASH (ValueError otherwise)."""
    match = CHECKPOINT.fullmatch(text)
    if match is None:
        raise ValueError(f"not WRITER:SEQ:HASH: {text!r}")
    return Checkpoint(match[1], int(match[2]), match[3])


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


GAP_PAGE = 500
OWN_DESIGN = "_design/couchgate-"
SHOWN = 20


async def gap_start(couch: CouchClient, audit_db: str, db: str) -> Any:
    """Where `db`'s `_changes` stood when the audit log began (0 when it was not noted)."""
    marker = await couch.json("GET", f"/{quote(audit_db, safe='')}/{quote(START_PREFIX + db, safe='')}")
    return marker.body.get("since", 0) if marker.ok and isinstance(marker.body, dict) else 0


def accounted_for(rev: str, known: set[str]) -> bool:
    head = rev.split("-", 1)[0]
    return rev in known or "*" in known or f"gen:{head}" in known


async def unaccounted(
    couch: CouchClient, audit_db: str, db: str, since: Any
) -> AsyncIterator[tuple[str, str]]:
    """(doc id, rev) of each revision `_changes` shows after `since` that no entry accounts for."""
    view = f"/{quote(audit_db, safe='')}/{DESIGN_ID}/_view/writes"
    while True:
        params = {"style": "all_docs", "limit": str(GAP_PAGE),
                  "since": since if isinstance(since, str) else orjson.dumps(since).decode()}  # fmt: skip
        result = await couch.json("GET", f"/{quote(db, safe='')}/_changes", params=params)
        if result.status == 404:
            return  # no such database: no write to account for
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"the changes feed of {db} answered {result.status}")
        rows = [
            r for r in result.body.get("results", []) if isinstance(r, dict) and isinstance(r.get("id"), str)
        ]
        ids = sorted({r["id"] for r in rows if not r["id"].startswith(OWN_DESIGN)})
        known: dict[str, set[str]] = {i: set() for i in ids}
        if ids:
            answer = await couch.json("POST", view, body={"keys": [[db, i] for i in ids]})
            if not answer.ok or not isinstance(answer.body, dict):
                raise UpstreamError(f"the audit writes index answered {answer.status}")
            for row in answer.body.get("rows", []):
                key, value = row.get("key"), row.get("value")
                if isinstance(key, list) and len(key) == 2 and key[1] in known and isinstance(value, str):
                    known[key[1]].add(value)
        for row in rows:
            if row["id"] not in known:
                continue
            for change in row.get("changes") or []:
                rev = change.get("rev") if isinstance(change, dict) else None
                if isinstance(rev, str) and not accounted_for(rev, known[row["id"]]):
                    yield row["id"], rev
        since = result.body.get("last_seq", since)
        if len(result.body.get("results", [])) < GAP_PAGE:
            return


async def verify_log(couch: CouchClient, db: str, checkpoints: Iterable[Checkpoint] = ()) -> ChainChecker:
    """Every writer's chain checked, entry by entry (`checker.breaks` lists what is wrong)."""
    checker = ChainChecker(await retention_markers(couch, db), checkpoints)
    async for entry in chain_entries(couch, db):
        checker.feed(entry)
    checker.finish()
    return checker


async def run_verify(
    settings: Settings, console: Console, checkpoints: Iterable[Checkpoint] = (),
    gap_dbs: Iterable[str] | None = None, since: str | None = None,
) -> int:  # fmt: skip
    """The chains, then the gaps of `gap_dbs` (default: the main database); 1 on any problem."""
    async with couch_client(settings) as couch:
        checker = await verify_log(couch, settings.audit_db, checkpoints)
        gaps: list[tuple[str, str, str]] = []
        for db in [settings.db] if gap_dbs is None else gap_dbs:
            start = since if since is not None else await gap_start(couch, settings.audit_db, db)
            gaps += [
                (db, doc_id, rev) async for doc_id, rev in unaccounted(couch, settings.audit_db, db, start)
            ]
    breaks = checker.breaks
    intents = checker.intents
    entries = checker.entries - intents
    writers = len({w.removesuffix(INTENTS_SUFFIX) for w in checker.writers})
    for problem in breaks:
        console.print(f"[red]break[/red] {problem}")
    for db, doc_id, rev in gaps[:SHOWN]:
        console.print(f"[red]no entry[/red] for the write of {db}/{doc_id} rev {rev}")
    if not breaks and not gaps:
        console.print(f"[green]audit log intact[/green]: {entries} entries from {writers} writers "
                      f"({intents} intents); every write in the database accounted for")  # fmt: skip
        return 0
    if breaks:
        console.print(f"[red]{len(breaks)} breaks[/red] in {entries} entries")
    if gaps:
        console.print(f"[red]{len(gaps)} writes[/red] in the database have no audit entry")
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
    check.add_argument(
        "--db",
        action="append",
        dest="gap_dbs",
        metavar="DB",
        help="check this database's writes for gaps (repeatable; default: COUCHGATE_DB)",
    )
    check.add_argument("--since", help="the _changes seq to check from (default: where the audit log began)")
    check.add_argument("--no-gaps", action="store_true", help="check the hash chains only")
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
            gap_dbs = [] if args.no_gaps else args.gap_dbs
            return asyncio.run(run_verify(settings, console, checkpoints, gap_dbs, args.since))
        return asyncio.run(run_tail(settings, args, console))
    except ValueError as exc:
        console.print(f"couchgate: a checkpoint is WRITER:SEQ:HASH ({exc})")
        return 2
    except UpstreamError as exc:
        console.print(f"couchgate: {exc.reason}")
        return 2
    except KeyboardInterrupt:
        return 130
