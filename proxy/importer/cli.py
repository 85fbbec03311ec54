"""`couchgate import FILE`: upload a file of docs to a running couchgate as NDJSON, with a
progress bar, a summary table and a results file (one JSON line per doc).

Exit status: 0 when every doc was imported or already there (created, updated,
unchanged, skipped, or stored as a branch with keep_both), 1 otherwise, 2 on usage or
connection errors."""

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

NOT_IMPORTED = {"forbidden", "invalid"}


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
    if isinstance(body, dict):
        body = body.get("docs") if isinstance(body.get("docs"), list) else body.get("rows", [body])
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

    summary: dict[str, Any] = {}
    counts: dict[str, int] = {}
    results = Path(args.results)
    progress = Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
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
                out.write(orjson.dumps(row) + b"\n")
                counts[row["status"]] = counts.get(row["status"], 0) + 1
                progress.advance(task)
    table = Table("status", "docs", title=f"{args.file}{' (dry run)' if args.dry_run else ''}")
    for status, n in sorted((summary or counts).items()):
        table.add_row(status, f"{n:,}")
    console.print(table)
    console.print(f"results: {results}")
    return 1 if any(counts.get(s) for s in NOT_IMPORTED) else 0


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
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return asyncio.run(upload(args, console))
    except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
        console.print(f"[red]couchgate import: {exc}[/red]")
        return 2
