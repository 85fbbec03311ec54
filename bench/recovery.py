"""Recovery after an outage, and a restarted couchgate's time to ready.

    .venv/bin/python -m bench.recovery [--preset tiny] [--rounds 5] [--down 10]

- Recovery: an offline CHW's longpoll `_changes` waits through couchgate; the backend (an
  on-disk pouchdb-server, so its data survives) is killed, stays down `--down` seconds and
  is started again; as soon as it answers, a doc in the CHW's scope is changed straight in
  the backend. Measured: from the backend answering again to the waiting client receiving
  that change (couchgate's follower probes CouchDB every 0.5 s while it is down).
- Restart: couchgate started against the loaded backend, time until `/_couchgate/ready`
  answers 200 (the scope index built and level with CouchDB).
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.error
import urllib.request

import aiohttp

from bench.common import couchgate, write_section
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import PouchServer
from proxy.seed.generator import preset
from proxy.seed.loader import load

DB = "medic"
CHW = basic_auth_header("chw1", "chw1-pass")


def ready_after_start(backend: PouchServer) -> float:
    """Seconds from starting couchgate to its first 200 from /_couchgate/ready."""
    started = time.monotonic()
    with couchgate(backend, DB) as (url, _):
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_couchgate/ready", timeout=5):
                    return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)


async def one_outage(url: str, backend: PouchServer, down: float) -> float:
    async with aiohttp.ClientSession(headers={"Authorization": CHW}) as http:
        async with http.get(f"{url}/{DB}/_changes?style=all_docs&include_docs=true") as resp:
            feed = await resp.json()
        target = next(
            r["doc"] for r in feed["results"] if r.get("doc", {}).get("type") in ("person", "contact")
        )
        query = f"since={feed['last_seq']}&feed=longpoll&heartbeat=1000&timeout=600000"
        async with http.get(f"{url}/{DB}/_changes?{query}") as waiting:
            assert waiting.status == 200
            body = asyncio.create_task(waiting.read())
            await asyncio.to_thread(backend.kill)
            await asyncio.sleep(down)
            await asyncio.to_thread(backend.start)  # returns once the backend answers
            answering = time.monotonic()
            _, doc = await asyncio.to_thread(backend.request, "GET", f"/{DB}/{target['_id']}")
            assert isinstance(doc, dict)
            doc["bench_touch"] = answering
            status, _ = await asyncio.to_thread(backend.request, "PUT", f"/{DB}/{target['_id']}", doc)
            assert status == 201, status
            await body
            return time.monotonic() - answering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--down", type=float, default=10.0)
    args = parser.parse_args()
    with PouchServer(in_memory=False, heap_mb=12_288) as backend:
        data = preset(args.preset)
        asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, DB, data))
        _, info = backend.request("GET", f"/{DB}")
        docs = info.get("doc_count", 0) if isinstance(info, dict) else 0
        starts = [ready_after_start(backend) for _ in range(args.rounds)]
        recoveries = []
        with couchgate(backend, DB) as (url, _):
            for _ in range(args.rounds):
                recoveries.append(asyncio.run(one_outage(url, backend, args.down)))
    lines = [
        f"Command: `.venv/bin/python -m bench.recovery --preset {args.preset} --rounds {args.rounds} "
        f"--down {args.down:g}` ({docs:,} docs, on-disk pouchdb-server, couchgate as a subprocess; "
        "this 2-core machine).",
        "",
        "| measured | median | max | target |",
        "|---|---|---|---|",
        f"| backend answering again -> the waiting longpoll client has the change (down {args.down:g} s) "
        f"| {statistics.median(recoveries) * 1000:,.0f} ms | {max(recoveries) * 1000:,.0f} ms | < 1 s |",
        f"| couchgate started -> `/_couchgate/ready` 200 | {statistics.median(starts):.2f} s "
        f"| {max(starts):.2f} s | - |",
    ]
    write_section("Recovery and restart", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
