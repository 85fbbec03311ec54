"""Offline replication through couchgate versus direct replication, in one run.

    .venv/bin/python -m bench.replication --preset 100k [--preset 1m] [--backend couchdb:PORT]

For each data size: loads the demo data set into the backend (see bench/common.py), starts
couchgate, and measures (real PouchDB 9 in Node, from tests/e2e/pouch.js):
- the initial pull of a CHW and of a supervisor through couchgate, versus a direct pull
  of a database that holds exactly the docs they may read;
- a no-op pull from the checkpoint (nothing changed), both ways (the median of NOOPS);
- upstream write -> arrival on a longpolling client (p50, p99);
- the scope index's build time from scratch and its memory (RSS against an empty db);
- the first pull after a fresh couchgate says ready, against the pulls after it.
Results go to docs/benchmarks.md, a section per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import orjson

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    get_json,
    median,
    open_backend,
    percentile,
    rss_mb,
    run_pouch,
    short_name,
    wait_ready,
    write_section,
)
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import Backend
from proxy.seed.generator import preset
from proxy.seed.loader import load

USERS = ("chw1", "supervisor")
# No-op pulls per round: a no-op takes milliseconds, so one is mostly noise; each round
# reports the median of these, and the table the median of the rounds'.
NOOPS = 10
# Fresh starts of couchgate for the first-pull measure; after each, a first and a second pull.
RESTARTS = 3


async def copy_readable(gateway: str, backend: Backend, user: str, target: str) -> int:
    """A database holding exactly what `user` may read, for the direct baseline."""
    backend.request("PUT", f"/{target}")
    auth = basic_auth_header(user, f"{user}-pass")
    headers = {"Authorization": auth, "Accept": "application/json"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{gateway}/medic/_all_docs?include_docs=true") as resp,
    ):
        rows = orjson.loads(await resp.read())["rows"]
    docs = [r["doc"] for r in rows]
    for i in range(0, len(docs), 2000):
        status, body = backend.request(
            "POST", f"/{target}/_bulk_docs", {"docs": docs[i : i + 2000], "new_edits": False}
        )
        assert status == 201, body
    return len(docs)


async def longpoll_latency(gateway: str, backend: Backend, rounds: int) -> list[float]:
    auth = basic_auth_header("chw1", "chw1-pass")
    admin = basic_auth_header(backend.admin_user, backend.admin_password)
    samples: list[float] = []
    async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as http:
        async with http.get(f"{gateway}/medic/_changes?since=now", headers={"Authorization": auth}) as resp:
            since = (await resp.json())["last_seq"]
        for i in range(rounds):
            url = f"{gateway}/medic/_changes?feed=longpoll&since={since}&timeout=30000&heartbeat=10000"
            poll = asyncio.create_task(http.get(url, headers={"Authorization": auth}))
            await asyncio.sleep(0.05)
            doc = {"type": "data_record", "form": "bench", "fields": {"patient_uuid": "d0-hc0-a0-h0-p0"},
                   "contact": {"_id": "d0-hc0-a0-chw"}}  # fmt: skip
            started = time.perf_counter()
            async with http.put(f"{backend.url}/medic/bench-latency-{i}", data=orjson.dumps(doc),
                                headers={"Authorization": admin, "Content-Type": "application/json"}):  # fmt: skip
                pass
            resp = await poll
            body = await resp.json()
            samples.append((time.perf_counter() - started) * 1000)
            assert [r["id"] for r in body["results"]] == [f"bench-latency-{i}"], body
            since = body["last_seq"]
    return samples


def pull(url: str, user: str, noops: int = 1) -> dict[str, Any]:
    return run_pouch(
        {"op": "pull_timed", "url": url, "noops": noops, "auth": {"basic": [user, f"{user}-pass"]}}
    )


def first_after_start(backend: Backend, user: str) -> dict[str, Any]:
    """Fresh couchgates: how long until ready, the first pull once it is, and the one after
    it (each into an empty local db); medians over RESTARTS starts."""
    ready, first, second = [], [], []
    for _ in range(RESTARTS):
        with couchgate(backend, "medic") as (gateway, _):
            ready.append(wait_ready(gateway))
            first.append(pull(f"{gateway}/medic", user)["first_ms"])
            second.append(pull(f"{gateway}/medic", user)["first_ms"])
    return {"ready_s": median(ready), "first_ms": median(first), "later_ms": median(second)}


def measure(spec: str, preset_name: str, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"preset": preset_name}
    with open_backend(spec) as backend:
        result["backend"] = describe(backend)
        result["backend_name"] = short_name(backend)
        data = preset(preset_name)
        t = time.perf_counter()
        report = asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, "medic", data))
        result["docs"] = report.docs_total
        result["load_s"] = time.perf_counter() - t
        backend.request("PUT", "/empty")
        with couchgate(backend, "empty") as (_, proc):
            result["rss_empty_mb"] = rss_mb(proc.pid)
        with couchgate(backend, "medic") as (gateway, proc):
            admin = basic_auth_header(backend.admin_user, backend.admin_password)
            t = time.perf_counter()
            scopes = {u: get_json(f"{gateway}/_couchgate/users/{u}/scope", admin) for u in USERS}
            result["build_s"] = time.perf_counter() - t
            result["rss_full_mb"] = rss_mb(proc.pid)
            for user in USERS:
                direct_db = f"direct-{user}"
                count = asyncio.run(copy_readable(gateway, backend, user, direct_db))
                via, direct = [], []
                for _ in range(rounds):
                    via.append(run_pouch({"op": "pull_timed", "url": f"{gateway}/medic", "noops": NOOPS,
                                          "auth": {"basic": [user, f"{user}-pass"]}}))  # fmt: skip
                    direct.append(run_pouch({"op": "pull_timed", "url": f"{backend.url}/{direct_db}", "noops": NOOPS,
                                             "auth": {"basic": [backend.admin_user, backend.admin_password]}}))  # fmt: skip
                assert all(r["docs"] >= count for r in via), (via, count)
                result[user] = {
                    "readable": scopes[user]["total"],
                    "pulled": via[0]["docs"],
                    "via_first_s": median([r["first_ms"] for r in via]) / 1000,
                    "direct_first_s": median([r["first_ms"] for r in direct]) / 1000,
                    "via_noop_ms": median([r["noop_ms"] for r in via]),
                    "direct_noop_ms": median([r["noop_ms"] for r in direct]),
                }
            samples = asyncio.run(longpoll_latency(gateway, backend, 50))
            result["latency_p50_ms"] = percentile(samples, 50)
            result["latency_p99_ms"] = percentile(samples, 99)
        for user in USERS:
            result[user]["after_start"] = first_after_start(backend, user)
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data | user | docs pulled | direct pull | via couchgate | ratio | direct no-op | couchgate no-op | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for user in USERS:
            u = r[user]
            lines.append(
                f"| {r['docs']:,} | {user} | {u['pulled']:,} | {u['direct_first_s']:.2f} s | {u['via_first_s']:.2f} s "
                f"| {u['via_first_s'] / u['direct_first_s']:.2f}x | {u['direct_noop_ms']:.0f} ms "
                f"| {u['via_noop_ms']:.0f} ms | {u['via_noop_ms'] / u['direct_noop_ms']:.2f}x |"
            )
    lines += ["", "| data | index build from scratch | index memory (RSS over an empty db) | longpoll arrival p50 | p99 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        memory = r["rss_full_mb"] - r["rss_empty_mb"]
        lines.append(
            f"| {r['docs']:,} | {r['build_s']:.1f} s | {memory:.0f} MB ({memory / r['docs'] * 1e6:.0f} MB per million docs) "
            f"| {r['latency_p50_ms']:.0f} ms | {r['latency_p99_ms']:.0f} ms |"
        )
    lines += ["", "First pull after a fresh couchgate says ready (`/_couchgate/ready` 200), against the pull "
              f"after it (each into an empty local db; medians over {RESTARTS} starts):", "",
              "| data | user | start to ready | first pull | second pull | first / second |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        for user in USERS:
            a = r[user]["after_start"]
            lines.append(
                f"| {r['docs']:,} | {user} | {a['ready_s']:.1f} s | {a['first_ms'] / 1000:.2f} s "
                f"| {a['later_ms'] / 1000:.2f} s | {a['first_ms'] / a['later_ms']:.2f}x |"
            )
    if len(results) > 1:
        base = results[0]
        lines += ["", f"Cost growth against {base['docs']:,} docs (the same users; 1.00x = no growth):", "",
                  "the backend itself also slows down with size, so the last two columns divide",
                  "couchgate's growth by the direct pull's growth on the same backend.", "",
                  "| data | user | initial pull | no-op sync | initial pull / direct's growth | no-op / direct's growth |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in results[1:]:
            for user in USERS:
                u, b = r[user], base[user]
                pull = u["via_first_s"] / b["via_first_s"]
                noop = u["via_noop_ms"] / b["via_noop_ms"]
                pull_direct = u["direct_first_s"] / b["direct_first_s"]
                noop_direct = u["direct_noop_ms"] / b["direct_noop_ms"]
                lines.append(
                    f"| {r['docs']:,} | {user} | {pull:.2f}x | {noop:.2f}x "
                    f"| {pull / pull_direct:.2f}x | {noop / noop_direct:.2f}x |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", action="append", help="demo data size (repeatable): 100k, 1m, ...")
    parser.add_argument("--rounds", type=int, default=3)
    add_backend_arg(parser)
    args = parser.parse_args()
    presets = args.preset or ["100k"]
    results = [measure(args.backend, p, args.rounds) for p in presets]
    flag = backend_flag(args.backend)
    body = "\n".join([
        f"Command: `.venv/bin/python -m bench.replication {' '.join('--preset ' + p for p in presets)}"
        f" --rounds {args.rounds}{' ' + flag if flag else ''}` (medians of {args.rounds} rounds; PouchDB 9 in Node,",
        f"{results[0]['backend']}, both on this 2-core machine; 'direct' pulls a database holding exactly",
        "the user's readable docs, as the admin, straight from the backend; a round's no-op figure is",
        f"the median of {NOOPS} no-op pulls in a row from the same checkpoint).",
        "",
        table(results),
    ])  # fmt: skip
    write_section(f"Offline replication: {results[0]['backend_name']}", body)
    print(table(results))


if __name__ == "__main__":
    main()
