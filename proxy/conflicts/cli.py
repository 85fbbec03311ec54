"""`couchgate conflicts list|show ID|resolve ID --strategy ...|split ID [--apply]`, against a
running couchgate (`--url`, `--user`, `--password`; defaults from COUCHGATE_URL, ...)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from proxy.couch.client import basic_auth_header


async def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if args.user:
        headers["Authorization"] = basic_auth_header(args.user, args.password or "")
    url = args.url.rstrip("/") + path
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=None if body is None else orjson.dumps(body)) as resp,
    ):
        return resp.status, orjson.loads(await resp.read() or b"null")


def base(args: argparse.Namespace) -> str:
    return f"/{quote(args.db, safe='')}/_couchgate/conflicts"


def show_table(console: Console, described: dict[str, Any]) -> None:
    """Each leaf side by side: one column per leaf, one row per changed field."""
    leaves = described["leaves"]
    table = Table(
        "field",
        *[f"{leaf['_rev']}{' (winner)' if leaf['_rev'] == described['winner'] else ''}" for leaf in leaves],
        title=f"{described['id']}: {described['classification']} (ancestor {described['ancestor']['rev']})",
    )
    fields: dict[str, dict[str, Any]] = {}
    for leaf in leaves:
        for change in described["diffs"][leaf["_rev"]]["changes"]:
            name = ".".join(map(str, change["path"]))
            fields.setdefault(name, {})[leaf["_rev"]] = change
    for name, changes in sorted(fields.items()):
        cells = []
        for leaf in leaves:
            change = changes.get(leaf["_rev"])
            if change is None:
                cells.append("[dim]=[/dim]")
            elif change["op"] == "removed":
                cells.append(f"[red]- {orjson.dumps(change['before']).decode()}[/red]")
            else:
                cells.append(f"[green]{orjson.dumps(change['after']).decode()}[/green]")
        table.add_row(name, *cells)
    console.print(table)


async def list_all(args: argparse.Namespace, console: Console) -> int:
    """Every conflicted doc: follows `next` page after page (`--limit` docs a request)."""
    table = Table("id", "type", "classification", "winner", "conflicting revs")
    bookmark: str | None = None
    while True:
        query = f"?limit={args.limit}" + (f"&next={quote(bookmark, safe='')}" if bookmark else "")
        status, body = await call(args, "GET", base(args) + query)
        if status != 200:
            console.print(f"[red]{status}[/red] {body}")
            return 1
        for c in body["conflicts"]:
            revs = ", ".join(c["conflicts"] + c["deleted"])
            table.add_row(c["id"], str(c["type"]), c["classification"], str(c["winner"]), revs)
        bookmark = body.get("next")
        if not bookmark:
            break
    console.print(table)
    return 0


def show_split(console: Console, plan: dict[str, Any]) -> None:
    """The new doc of each leaf group, then every reference and the id it gets."""
    docs = Table("leaf revs", "type", "new id", "body from", title=f"split of {plan['id']}")
    for group in plan["leaves"]:
        revs = ", ".join(group.get("revs") or [group["rev"]])
        docs.add_row(revs, str(group["type"]), group["new_id"], str(group.get("from", "leaf")))
    refs = Table("doc", "path", "suggested", "chosen", title="references")
    for ref in plan["references"]:
        chosen = ref["chosen"] or "[red]choose with --ref DOC:PATH=NEWID[/red]"
        refs.add_row(ref["doc_id"], ".".join(map(str, ref["path"])), str(ref["suggested"]), chosen)
    console.print(docs)
    console.print(refs)
    if plan.get("already_split"):
        console.print("already split: nothing to do")
    elif plan.get("dry_run"):
        console.print(
            f"dry run: nothing written ({plan['unresolved']} references unresolved); --apply writes"
        )
    else:
        console.print("split written")


async def run(args: argparse.Namespace, console: Console) -> int:
    if args.conflicts_command == "list":
        return await list_all(args, console)
    doc = quote(args.id, safe="")
    if args.conflicts_command == "show":
        status, body = await call(args, "GET", f"{base(args)}/{doc}")
        if status != 200:
            console.print(f"[red]{status}[/red] {body}")
            return 1
        show_table(console, body)
        return 0
    if args.conflicts_command == "resolve":
        payload: dict[str, Any] = {"strategy": args.strategy}
        if args.rev:
            payload["rev"] = args.rev
        if args.doc:
            payload["doc"] = orjson.loads(Path(args.doc).read_bytes())  # noqa: ASYNC240 - a small file, read once
        query = "?dry_run=true" if args.dry_run else ""
        status, body = await call(args, "POST", f"{base(args)}/{doc}/resolve{query}", payload)
    else:
        query = "?dry_run=false" if args.apply else "?dry_run=true"
        refs: dict[str, dict[str, str]] = {}
        for choice in args.ref or []:  # DOC:PATH=NEWID
            target, _, new = choice.partition("=")
            ref_doc, _, path = target.partition(":")
            refs.setdefault(ref_doc, {})[path] = new
        keep = dict(choice.partition("=")[::2] for choice in args.keep or [])  # ROOT=REV
        payload = {"references": refs, **({"keep": keep} if keep else {})}
        status, body = await call(args, "POST", f"{base(args)}/{doc}/split{query}", payload)
        if status == 200:
            show_split(console, body)
            return 0
    console.print_json(orjson.dumps(body).decode())
    return 0 if status == 200 else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("conflicts", help="find, explain and resolve conflicts through a running couchgate")
    p.add_argument("--url", default=os.environ.get("COUCHGATE_URL", "http://127.0.0.1:5988"))
    p.add_argument("--user", default=os.environ.get("COUCHGATE_USER"))
    p.add_argument("--password", default=os.environ.get("COUCHGATE_PASSWORD"))
    p.add_argument("--db", default=os.environ.get("COUCHGATE_DB", "medic"))
    commands = p.add_subparsers(dest="conflicts_command", required=True)
    listing = commands.add_parser("list")
    listing.add_argument("--limit", type=int, default=50, help="docs per request (every page is listed)")
    show = commands.add_parser("show")
    show.add_argument("id")
    resolve = commands.add_parser("resolve")
    resolve.add_argument("id")
    resolve.add_argument("--strategy", choices=["pick", "merge", "auto"], required=True)
    resolve.add_argument("--rev")
    resolve.add_argument("--doc", help="a JSON file with the merged doc (strategy merge)")
    resolve.add_argument("--dry-run", action="store_true")
    split = commands.add_parser("split")
    split.add_argument("id")
    split.add_argument("--apply", action="store_true", help="write (the default only shows the plan)")
    split.add_argument("--ref", action="append", help="DOC:PATH=NEWID to choose a reference's new id")
    split.add_argument("--keep", action="append", help="ROOT=REV: the leaf a group of concurrent edits keeps")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return asyncio.run(run(args, console))
    except (aiohttp.ClientError, OSError) as exc:
        console.print(f"[red]couchgate conflicts: {exc}[/red]")
        return 2
