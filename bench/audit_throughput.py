"""Write throughput through couchgate with the audit log on versus off, in one run.

    .venv/bin/python -m bench.audit_throughput [--docs 4000] [--clients 8]

Concurrent clients write single docs (PUT) and `_bulk_docs` batches of 100 as an online
user through two couchgate processes against the same in-memory pouchdb-server; one has
the audit log on, the other off. Target: on >= 0.9x off. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiohttp
import orjson

from bench.common import couchgate, write_section
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import PouchServer


async def workload(url: str, db: str, auth: str, docs: int, clients: int, mode: str) -> float:
    """Docs written per second by `clients` concurrent writers."""
    headers = {"Authorization": auth, "Content-Type": "application/json", "Accept": "application/json"}
    per_client = docs // clients
    async with aiohttp.ClientSession(headers=headers) as http:

        async def client(n: int) -> None:
            if mode == "put":
                for i in range(per_client):
                    async with http.put(
                        f"{url}/{db}/c{n}-{i}-{uuid.uuid4().hex[:6]}", data=b'{"type":"person"}'
                    ) as r:
                        assert r.status == 201, await r.text()
            else:
                for start in range(0, per_client, 100):
                    batch = [
                        {"_id": f"b{n}-{start + j}-{uuid.uuid4().hex[:6]}", "type": "data_record"}
                        for j in range(100)
                    ]
                    async with http.post(f"{url}/{db}/_bulk_docs", data=orjson.dumps({"docs": batch})) as r:
                        assert r.status == 201, await r.text()

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        return per_client * clients / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with PouchServer(heap_mb=12_288) as backend:
        backend.request("PUT", "/_users/org.couchdb.user:writer",
                        {"name": "writer", "password": "writer-pass", "roles": ["member"], "type": "user"})  # fmt: skip
        backend.request("PUT", "/bench")
        auth = basic_auth_header("writer", "writer-pass")
        with couchgate(backend, "bench", COUCHGATE_AUDIT_ENABLED="true", COUCHGATE_AUDIT_DB="bench-audit") as (on, _), \
             couchgate(backend, "bench", COUCHGATE_AUDIT_ENABLED="false") as (off, _):  # fmt: skip
            for mode in ("put", "bulk"):
                results: dict[str, list[float]] = {"on": [], "off": []}
                for _ in range(args.rounds):  # alternate, so drift in the backend hits both alike
                    results["off"].append(
                        asyncio.run(workload(off, "bench", auth, args.docs, args.clients, mode))
                    )
                    results["on"].append(
                        asyncio.run(workload(on, "bench", auth, args.docs, args.clients, mode))
                    )
                on_rate, off_rate = (
                    sorted(results["on"])[len(results["on"]) // 2],
                    sorted(results["off"])[len(results["off"]) // 2],
                )
                rows.append((mode, off_rate, on_rate))
        _, audit = backend.request("GET", "/bench-audit")
    lines = [
        f"Command: `.venv/bin/python -m bench.audit_throughput --docs {args.docs} --clients {args.clients} --rounds {args.rounds}`",
        "(median docs/s of the rounds; an online user writing through couchgate to an in-memory",
        "pouchdb-server, audit on and off alternating in the same run).",
        "",
        "| workload | audit off | audit on | on / off |",
        "|---|---|---|---|",
    ]
    for mode, off_rate, on_rate in rows:
        label = "PUT one doc" if mode == "put" else "_bulk_docs of 100"
        lines.append(
            f"| {label} | {off_rate:,.0f} docs/s | {on_rate:,.0f} docs/s | {on_rate / off_rate:.2f}x |"
        )
    lines.append(
        f"\nAudit entries written during the run: {audit.get('doc_count', 0):,} (plus the index design doc)."
    )
    write_section("Audit log overhead", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
