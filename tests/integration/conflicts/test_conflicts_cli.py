"""`couchgate conflicts ...` against a running couchgate, in process: `list` follows every
page, `split` shows its plan without writing unless told to."""

from __future__ import annotations

import argparse

from integration.conflicts.test_conflicts import leaf, leaf_revs, make_concurrent, write
from rich.console import Console

from proxy.conflicts.cli import add_parser, run
from proxy.conflicts.split import new_id
from proxy.devserver.backend import PouchServer

from support import Gateway


async def cli(gateway: Gateway, backend: PouchServer, db: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["conflicts", "--url", gateway.url, "--user", backend.admin_user,
                              "--password", backend.admin_password, "--db", db, *argv])  # fmt: skip
    console = Console(record=True, width=250)
    code = await run(args, console)
    return code, console.export_text()


async def test_list_follows_every_page(gateway: Gateway, backend: PouchServer, db: str) -> None:
    for doc_id in ("c1", "c2", "c3"):
        make_concurrent(backend, db, doc_id)
    code, out = await cli(gateway, backend, db, "list", "--limit", "1")
    assert code == 0
    assert all(doc_id in out for doc_id in ("c1", "c2", "c3")), out


async def test_split_shows_the_plan_and_writes_only_when_applied(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    write(backend, db, leaf("X1", ["1-p0"], type="person"), leaf("X1", ["1-r0"], type="data_record"))
    assert backend.request("PUT", f"/{db}/task1", {"type": "task", "requester": "X1"})[0] == 201
    person, report = new_id("X1", "1-p0"), new_id("X1", "1-r0")
    code, out = await cli(gateway, backend, db, "split", "X1")
    assert code == 0
    assert person in out and report in out and "task1" in out and "requester" in out
    assert "dry run: nothing written (1 references unresolved)" in out
    assert sorted(leaf_revs(backend, db, "X1")) == ["1-p0", "1-r0"]
    assert backend.request("GET", f"/{db}/task1")[1]["requester"] == "X1"
    code, out = await cli(
        gateway, backend, db, "split", "X1", "--apply", "--ref", f"task1:requester={report}"
    )
    assert code == 0 and "split written" in out, out
    assert backend.request("GET", f"/{db}/task1")[1]["requester"] == report
