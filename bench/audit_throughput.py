"""Write throughput through couchgate with the audit log on versus off, in one run.

    .venv/bin/python -m bench.audit_throughput [--docs 4000] [--clients 8] [--rounds 3]

Two couchgate processes, one with the audit log on and one with it off, in front of the
same backend (see bench/common.py) holding the `tiny` demo data set in `medic`. Workloads:
- an online user (`clerk`, data entry) writing single docs (PUT) and `_bulk_docs` of 100;
- an offline CHW (`chw1`) pushing reports about a patient of their area as PouchDB does:
  `_bulk_docs` of 100 with `new_edits: false`, each doc judged by the access rules.
Rounds alternate off and on; after each "on" round the run waits until that process's
audit queue is empty, so its audit writes never load the backend during an "off" round.
The audit log stores each flushed batch of entries (up to COUCHGATE_AUDIT_BATCH_SIZE, 200)
as one doc, so an audited doc costs the backend a fraction of a write, not a second one.
Target: on >= 0.9x off. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    open_backend,
    short_name,
    write_section,
)
from proxy.couch.client import basic_auth_header
from proxy.seed.generator import preset
from proxy.seed.loader import load

DB = "medic"
CHW_CONTACT = {"_id": "d0-hc0-a0-chw", "parent": {"_id": "d0-hc0-a0", "parent": {"_id": "d0-hc0", "parent": {"_id": "d0"}}}}  # fmt: skip
PATIENT = "d0-hc0-a0-h0-p0"  # a person in chw1's area
LABELS = {
    "put": "online user: PUT one doc",
    "bulk": "online user: `_bulk_docs` of 100",
    "offline": "offline CHW: `_bulk_docs` of 100, `new_edits: false`",
}


def offline_report(n: int, i: int) -> dict[str, Any]:
    rev = uuid.uuid4().hex
    return {
        "_id": f"o{n}-{i}-{uuid.uuid4().hex[:8]}",
        "_rev": f"1-{rev}",
        "_revisions": {"start": 1, "ids": [rev]},
        "type": "data_record",
        "form": "bench_visit",
        "reported_date": 1_700_000_000_000 + i,
        "contact": CHW_CONTACT,
        "fields": {"patient_uuid": PATIENT},
    }


async def workload(url: str, auth: str, docs: int, clients: int, mode: str) -> float:
    """Docs written per second by `clients` concurrent writers."""
    headers = {"Authorization": auth, "Content-Type": "application/json", "Accept": "application/json"}
    per_client = docs // clients
    async with aiohttp.ClientSession(headers=headers) as http:

        async def client(n: int) -> None:
            if mode == "put":
                for i in range(per_client):
                    async with http.put(
                        f"{url}/{DB}/c{n}-{i}-{uuid.uuid4().hex[:6]}", data=b'{"type":"person"}'
                    ) as r:
                        assert r.status == 201, await r.text()
                return
            for start in range(0, per_client, 100):
                if mode == "bulk":
                    batch: Any = {"docs": [{"_id": f"b{n}-{start + j}-{uuid.uuid4().hex[:6]}",
                                            "type": "data_record"} for j in range(100)]}  # fmt: skip
                else:
                    batch = {"docs": [offline_report(n, start + j) for j in range(100)], "new_edits": False}
                async with http.post(f"{url}/{DB}/_bulk_docs", data=orjson.dumps(batch)) as r:
                    assert r.status == 201, await r.text()
                    rows = orjson.loads(await r.read())
                    assert not any("error" in row for row in rows), rows[:3]

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        return per_client * clients / (time.perf_counter() - started)


async def drain(url: str, within: float = 300) -> dict[str, Any]:
    """Wait until couchgate at `url` has written every queued audit entry; its audit health."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/_couchgate/ready") as r:
                body = await r.json(content_type=None)
            audit = body.get("checks", {}).get("audit", {})
            if audit.get("queued") == 0:
                return dict(audit)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the audit queue did not drain: {audit}")
            await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    add_backend_arg(parser)
    args = parser.parse_args()
    flag = backend_flag(args.backend)
    rows = []
    written = 0
    with open_backend(args.backend) as backend:
        label, name = describe(backend), short_name(backend)
        asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, DB, preset("tiny")))
        online, offline = basic_auth_header("clerk", "clerk-pass"), basic_auth_header("chw1", "chw1-pass")
        with couchgate(backend, DB, COUCHGATE_AUDIT_ENABLED="true", COUCHGATE_AUDIT_DB="bench-audit",
                       COUCHGATE_AUDIT_DURABLE="false") as (on, _), \
             couchgate(backend, DB, COUCHGATE_AUDIT_ENABLED="true", COUCHGATE_AUDIT_DB="bench-audit",
                       COUCHGATE_AUDIT_DURABLE="true") as (durable, _), \
             couchgate(backend, DB, COUCHGATE_AUDIT_ENABLED="false") as (off, _):  # fmt: skip
            for mode in ("put", "bulk", "offline"):
                auth = offline if mode == "offline" else online
                results: dict[str, list[float]] = {"on": [], "off": [], "durable": []}
                for _ in range(args.rounds):  # alternate, so drift in the backend hits all alike
                    results["off"].append(asyncio.run(workload(off, auth, args.docs, args.clients, mode)))
                    results["on"].append(asyncio.run(workload(on, auth, args.docs, args.clients, mode)))
                    # Its audit writes finish before the next round.
                    written = int(asyncio.run(drain(on)).get("written", 0))
                    results["durable"].append(
                        asyncio.run(workload(durable, auth, args.docs, args.clients, mode))
                    )
                    written += int(asyncio.run(drain(durable)).get("written", 0))
                rates = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
                rows.append((mode, rates["off"], rates["on"], rates["durable"]))
        _, audit = backend.request("GET", "/bench-audit")
    lines = [
        f"Command: `.venv/bin/python -m bench.audit_throughput --docs {args.docs} --clients {args.clients} --rounds {args.rounds}"
        f"{' ' + flag if flag else ''}`",
        f"(median docs/s of the rounds; writing through couchgate to {label}",
        "holding the `tiny` demo data; audit off, on with entries queued only (COUCHGATE_AUDIT_DURABLE=false)",
        "and on with an intent stored before each write (durable, the default), in turn in the same run;",
        "after each audited round the run waits for its audit queue to drain before the next round).",
        "",
        "| workload | audit off | audit on, queued | on / off | audit on, durable (intents) | durable / off |",
        "|---|---|---|---|---|---|",
    ]
    for mode, off_rate, on_rate, durable_rate in rows:
        lines.append(
            f"| {LABELS[mode]} | {off_rate:,.0f} docs/s | {on_rate:,.0f} docs/s | {on_rate / off_rate:.2f}x "
            f"| {durable_rate:,.0f} docs/s | {durable_rate / off_rate:.2f}x |"
        )
    docs = audit.get("doc_count", 1) - 1 if isinstance(audit, dict) else 0  # less the index design doc
    lines.append(f"\nAudit entries written during the run: {written:,}, in {docs:,} batch docs.")
    write_section(f"Audit log overhead: {name}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
