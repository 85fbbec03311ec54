"""What a pull that removes docs costs, against pulling as many docs; and what the index
snapshot costs to save and take up again.

    .venv/bin/python -m bench.removals [--households 400] [--rounds 3] [--snapshot 100k]

Removals: an in-memory pouchdb-server holds a CHW's area with `households` households
(each with two people and two reports: five docs), and couchgate (a subprocess). Each
round, a fresh real PouchDB 9 device pulls the area (the initial pull), every household
moves to another CHW's area (one upstream `_bulk_docs`), and the device pulls again (every
doc of the area removed from it), then they move back and it pulls again (every doc
returned). Timed in the test process around each pull; couchgate's index is brought level
first so the pulls are compared alone.

Snapshot: the scope index of the demo data set (`--snapshot`, a preset of
proxy.seed.generator) built in-process, saved with `proxy.offline.snapshot` and loaded
back; the file's size and both times.
Results go to docs/benchmarks.md ("Removals").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import PROJECT_ROOT, couchgate, median, write_section
from bench.index_gc import build
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import PouchServer
from proxy.offline.snapshot import Snapshots

sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from e2e_support import PouchSession  # the tests' PouchDB device driver

PASSWORD = "bench-pass"
SETTINGS = {
    "_id": "settings",
    "settings": {
        "roles": {"chw": {"offline": True}},
        "permissions": {"can_edit": ["chw"], "can_create_records": ["chw"]},
        "replication_depth": [{"role": "chw", "depth": 3}],
    },
}


def lineage(*ids: str) -> dict[str, Any] | None:
    parent: dict[str, Any] | None = None
    for doc_id in reversed(ids):
        parent = {"_id": doc_id, **({"parent": parent} if parent else {})}
    return parent


def area_docs(households: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        SETTINGS,
        {"_id": "district", "type": "district_hospital"},
        {"_id": "hc", "type": "health_center", "parent": lineage("district")},
        {"_id": "area_a", "type": "clinic", "parent": lineage("hc", "district")},
        {"_id": "area_b", "type": "clinic", "parent": lineage("hc", "district")},
    ]
    for h in range(households):
        house = f"house{h}"
        docs.append(
            {"_id": house, "type": "clinic", "name": house, "parent": lineage("area_a", "hc", "district")}
        )
        for p in range(2):
            person = f"{house}-p{p}"
            docs.append({"_id": person, "type": "person", "name": person,
                         "parent": lineage(house, "area_a", "hc", "district")})  # fmt: skip
            docs.append({"_id": f"{person}-r", "type": "data_record", "form": "visit",
                         "contact": lineage(person, house, "area_a", "hc", "district"),
                         "fields": {"patient_uuid": person, "notes": "x" * 200}})  # fmt: skip
    return docs


def move_all(backend: PouchServer, households: int, area: str) -> None:
    keys = [f"house{h}" for h in range(households)]
    status, body = backend.request("POST", "/medic/_all_docs?include_docs=true", {"keys": keys})
    assert status == 200, body
    moved = [{**r["doc"], "parent": lineage(area, "hc", "district")} for r in body["rows"]]
    status, body = backend.request("POST", "/medic/_bulk_docs", {"docs": moved})
    assert status == 201 and all("ok" in r for r in body), body


async def level(gateway: str, backend: PouchServer) -> int:
    """Bring couchgate's index level with the backend; the CHW's docs in scope."""
    admin = basic_auth_header(backend.admin_user, backend.admin_password)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway}/_couchgate/users/chw_a/scope", headers={"Authorization": admin}) as resp,
    ):
        body = await resp.json()
    return int(body["total"])


async def timed_pull(pouch: PouchSession, device: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = await pouch.device("pull", device, "chw_a", PASSWORD)
    elapsed = time.perf_counter() - started
    assert result.get("ok") and not result["errors"], result
    return elapsed, result


async def removal_rounds(gateway: str, backend: PouchServer, households: int, rounds: int) -> dict[str, Any]:
    pulls: dict[str, list[float]] = {"initial": [], "removal": [], "return": []}
    counts: dict[str, int] = {}
    async with PouchSession(f"{gateway}/medic") as pouch:
        for n in range(rounds):
            device = f"bench{n}"
            counts["in_scope"] = await level(gateway, backend)
            elapsed, _ = await timed_pull(pouch, device)
            pulls["initial"].append(elapsed)
            held = len(await pouch.docs(device))
            counts["held"] = held

            move_all(backend, households, "area_b")
            await level(gateway, backend)
            elapsed, result = await timed_pull(pouch, device)
            pulls["removal"].append(elapsed)
            left = held - len(await pouch.docs(device))
            assert left == households * 5, (left, result)
            counts["removed"] = left

            move_all(backend, households, "area_a")
            await level(gateway, backend)
            elapsed, _ = await timed_pull(pouch, device)
            pulls["return"].append(elapsed)
            assert len(await pouch.docs(device)) == held
    return {"pulls": pulls, **counts}


def removals(households: int, rounds: int) -> dict[str, Any]:
    with PouchServer() as backend:
        backend.request("PUT", "/medic")
        docs = area_docs(households)
        for i in range(0, len(docs), 2000):
            status, body = backend.request("POST", "/medic/_bulk_docs", {"docs": docs[i : i + 2000]})
            assert status == 201, body
        user = {"_id": "org.couchdb.user:chw_a", "name": "chw_a", "type": "user", "password": PASSWORD,
                "roles": ["chw"], "facility_id": "area_a"}  # fmt: skip
        assert backend.request("PUT", "/_users/org.couchdb.user:chw_a", user)[0] == 201
        with couchgate(backend, "medic", COUCHGATE_LOGIN_THROTTLE="false") as (gateway, _):
            return asyncio.run(removal_rounds(gateway, backend, households, rounds))


def snapshot(preset_name: str) -> dict[str, Any]:
    t = time.perf_counter()
    index, _ = build(preset_name)
    built = time.perf_counter() - t
    docs = len(index.entries)
    with tempfile.TemporaryDirectory() as tmp:
        store = Snapshots(Path(tmp), "medic", b"k" * 32)
        state = {"index": index}
        t = time.perf_counter()
        size = store.save("bench", state)
        saved = time.perf_counter() - t
        del index, state
        t = time.perf_counter()
        loaded = store.load("bench")
        restored = time.perf_counter() - t
        assert loaded is not None and len(loaded["index"].entries) == docs
    return {"preset": preset_name, "docs": docs, "build_s": built, "save_s": saved, "load_s": restored,
            "size_mb": size / 1e6}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--households", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--snapshot", action="append", help="demo preset for the snapshot (repeatable)")
    args = parser.parse_args()
    r = removals(args.households, args.rounds)
    p = {k: median(v) for k, v in r["pulls"].items()}
    lines = [
        f"Command: `.venv/bin/python -m bench.removals --households {args.households} --rounds {args.rounds}"
        + "".join(f" --snapshot {s}" for s in args.snapshot or [])
        + f"` (medians of {args.rounds} rounds, each with a fresh PouchDB 9 device; in-memory",
        "pouchdb-server and couchgate on this 2-core machine; couchgate's index is brought level",
        "before each timed pull, so the upstream moves are not in the pull's time).",
        "",
        f"A CHW's area of {args.households} households ({r['removed']:,} docs of the {r['held']:,} the device holds)",
        "moves to another CHW's area, then back:",
        "",
        "| pull | docs | time | against the initial pull |",
        "|---|---|---|---|",
        f"| initial (everything) | {r['held']:,} | {p['initial']:.2f} s | 1.00x |",
        f"| removing the area | {r['removed']:,} removed | {p['removal']:.2f} s | {p['removal'] / p['initial']:.2f}x |",
        f"| returning the area | {r['removed']:,} returned | {p['return']:.2f} s | {p['return'] / p['initial']:.2f}x |",
    ]
    if args.snapshot:
        lines += ["", "The scope index on disk (`COUCHGATE_STATE_DIR`), in-process from the demo data set:", "",
                  "| data | index build from docs | snapshot save | snapshot load | file |", "|---|---|---|---|---|"]  # fmt: skip
        for name in args.snapshot:
            s = snapshot(name)
            lines.append(
                f"| {s['docs']:,} docs | {s['build_s']:.1f} s | {s['save_s']:.2f} s | {s['load_s']:.2f} s "
                f"| {s['size_mb']:.0f} MB |"
            )
    body = "\n".join(lines)
    write_section("Removals", body)
    print(body)


if __name__ == "__main__":
    main()
