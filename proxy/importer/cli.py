"""`couchgate import FILE`: upload a file of docs to a running couchgate as NDJSON, with a
progress bar, a summary table and a results file (one JSON line per doc).

Exit status: 0 when every doc was imported or already there (created, updated,
unchanged, skipped, or stored as a branch with keep_both: a `conflict` with a `rev`), 1
otherwise: a doc forbidden, invalid, in error or in conflict without a stored branch, an
answer that ended without its summary or with fewer results than docs sent, or an import
that stopped with an error; 2 on usage or connection errors and timeouts."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proxy.couch.client import basic_auth_header

NOT_IMPORTED = {"forbidden", "invalid", "error"}


def not_imported(row: dict[str, Any]) -> bool:
    return row.get("status") in NOT_IMPORTED or (row.get("status") == "conflict" and "rev" not in row)


def ndjson_lines(path: Path) -> tuple[int, Iterator[bytes]]:
    """(doc count, lines) for any input shape: NDJSON files stream; JSON files are parsed
    once (they must fit in memory anyway) and turned into lines."""
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if path.suffix in {".ndjson", ".jsonl"} or not head.startswith((b"[", b"{")) or _looks_ndjson(path):
        with path.open("rb") as handle:
            count = sum(1 for line in handle if line.strip())

        def stream() -> Iterator[bytes]:
            with path.open("rb") as handle:
                yield from (line.rstrip(b"\n") + b"\n" for line in handle if line.strip())

        return count, stream()
    body = orjson.loads(path.read_bytes())
    if isinstance(body, dict) and "_id" not in body:  # an object with an _id is one doc
        for key in ("docs", "rows"):
            if isinstance(body.get(key), list):
                body = body[key]
                break
    docs = body if isinstance(body, list) else [body]
    return len(docs), (orjson.dumps(d) + b"\n" for d in docs)


def _looks_ndjson(path: Path) -> bool:
    with path.open("rb") as handle:
        first = handle.readline()
        second = handle.readline()
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return bool(second.strip())


async def upload(args: argparse.Namespace, console: Console) -> int:
    count, lines = ndjson_lines(Path(args.file))
    params = {"on_conflict": args.on_conflict}
    if args.dry_run:
        params["dry_run"] = "true"
    url = (
        f"{args.url.rstrip('/')}/{args.db}/_couchgate/import" if args.db else f"{args.url.rstrip('/')}/import"
    )
    headers = {"Content-Type": "application/x-ndjson", "Accept": "application/x-ndjson"}
    if args.user:
        headers["Authorization"] = basic_auth_header(args.user, args.password or "")

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield line

    summary: dict[str, Any] | None = None
    counts: dict[str, int] = {}
    failed = 0
    stopped: dict[str, Any] | None = None
    results = Path(args.results)
    progress = Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    # No total limit (a big import takes long), but a silent server is given up on.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=args.timeout)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url, data=body(), params=params, headers=headers) as resp,
    ):
        if resp.status != 200:
            console.print(f"[red]import refused[/red]: {resp.status} {(await resp.text())[:500]}")
            return 2
        with progress, results.open("wb") as out:  # noqa: ASYNC230 - a CLI writing its own results file
            task = progress.add_task("import", total=count)
            async for raw in resp.content:
                if not raw.strip():
                    continue
                row = orjson.loads(raw)
                if "summary" in row:
                    summary = row["summary"]
                    continue
                if "status" not in row:  # the import stopped: {"error", "reason"}
                    stopped = row
                    continue
                out.write(orjson.dumps(row) + b"\n")
                counts[row["status"]] = counts.get(row["status"], 0) + 1
                failed += not_imported(row)
                progress.advance(task)
    table = Table("status", "docs", title=f"{args.file}{' (dry run)' if args.dry_run else ''}")
    for status, n in sorted((summary or counts).items()):
        table.add_row(status, f"{n:,}")
    console.print(table)
    console.print(f"results: {results}")
    answered = sum(counts.values())
    if stopped is not None:
        console.print(f"[red]the import stopped[/red]: {stopped.get('error')}: {stopped.get('reason')}")
    if summary is None:
        console.print("[red]the answer ended without its summary: the import may be incomplete[/red]")
    if answered < count:
        console.print(f"[red]{count - answered:,} of {count:,} docs got no result[/red]")
    return 1 if failed or stopped is not None or summary is None or answered < count else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="import a file of docs (JSON array, {docs}, _all_docs rows, NDJSON)")
    p.add_argument("file")
    p.add_argument("--url", default=os.environ.get("COUCHGATE_URL", "http://127.0.0.1:5988"))
    p.add_argument("--user", default=os.environ.get("COUCHGATE_USER"))
    p.add_argument("--password", default=os.environ.get("COUCHGATE_PASSWORD"))
    p.add_argument("--db", help="target database (default: couchgate's own)")
    p.add_argument("--on-conflict", choices=["skip", "overwrite", "keep_both"], default="skip")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--results", default="import-results.jsonl")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the server to send anything"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return asyncio.run(upload(args, console))
    except (aiohttp.ClientError, OSError, orjson.JSONDecodeError, TimeoutError) as exc:
        console.print(f"[red]couchgate import: {exc or type(exc).__name__}[/red]")
        return 2
