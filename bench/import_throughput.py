"""Import through couchgate versus plain `_bulk_docs` straight to the backend, in one run.

    .venv/bin/python -m bench.import_throughput [--sizes 10000 100000]

For each size: half the docs already exist (identical content, so `unchanged`), half are
new. couchgate runs as a subprocess against the backend (see bench/common.py), with the audit
log off, on (queued) and on (durable: intents); the direct baseline sends the same docs with `_bulk_docs` in batches
of 500 to a database in the same state. Also reports couchgate's peak RSS during the
NDJSON import. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

import aiohttp
import orjson

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    open_backend,
    rss_mb,
    short_name,
    write_section,
)
from proxy.audit.cli import couch_client, unaccounted
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import Backend
from proxy.settings import load_settings

MODES = {"off": "off", "on": "on, queued", "durable": "on, durable"}


async def gap_check(backend: Backend, db: str, audit_db: str, since: object) -> tuple[float, int]:
    """The time `couchgate audit verify` takes to account for every write of `db`."""
    settings = load_settings(couch_url=backend.url, couch_user=backend.admin_user,
                             couch_password=backend.admin_password, audit_db=audit_db)  # fmt: skip
    async with couch_client(settings) as couch:
        started = time.perf_counter()
        missing = [gap async for gap in unaccounted(couch, audit_db, db, since)]
        return time.perf_counter() - started, len(missing)


def make_docs(n: int, prefix: str) -> list[dict[str, object]]:
    return [{"_id": f"{prefix}-{i:07d}", "type": "data_record", "form": "visit",
             "fields": {"patient_id": str(100000 + i), "temperature": 36.6}} for i in range(n)]  # fmt: skip


async def direct(backend: Backend, db: str, docs: list[dict[str, object]]) -> float:
    headers = {"Authorization": backend.auth_header, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        started = time.perf_counter()
        for i in range(0, len(docs), 500):
            async with http.post(
                f"{backend.url}/{db}/_bulk_docs", data=orjson.dumps({"docs": docs[i : i + 500]})
            ) as r:
                assert r.status == 201
        return time.perf_counter() - started


async def via_import(
    url: str, db: str, auth: str, docs: list[dict[str, object]]
) -> tuple[float, dict[str, int]]:
    async def body():
        for i in range(0, len(docs), 1000):
            yield b"".join(orjson.dumps(d) + b"\n" for d in docs[i : i + 1000])

    headers = {"Authorization": auth, "Content-Type": "application/x-ndjson"}
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        started = time.perf_counter()
        summary: dict[str, int] = {}
        async with http.post(f"{url}/{db}/_couchgate/import", data=body()) as resp:
            async for line in resp.content:
                if line.startswith(b'{"summary"'):
                    summary = orjson.loads(line)["summary"]
        return time.perf_counter() - started, summary


def sample_rss(pid: int, samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(0.05):
        samples.append(rss_mb(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    add_backend_arg(parser)
    args = parser.parse_args()
    flag = backend_flag(args.backend)
    rows = []
    gaps: dict[int, tuple[float, int]] = {}
    with open_backend(args.backend) as backend:
        label, name = describe(backend), short_name(backend)
        auth = basic_auth_header(backend.admin_user, backend.admin_password)
        backend.request("PUT", "/unused")
        for audit in args.modes:
            env = {"COUCHGATE_AUDIT_ENABLED": "false" if audit == "off" else "true",
                   "COUCHGATE_AUDIT_DURABLE": "true" if audit == "durable" else "false",
                   "COUCHGATE_AUDIT_DB": f"bench-audit-{audit}"}  # fmt: skip
            with couchgate(backend, "unused", **env) as (url, proc):
                for n in args.sizes:
                    docs = make_docs(n, f"n{n}")
                    for db in (f"direct-{audit}-{n}", f"import-{audit}-{n}"):
                        backend.request("PUT", f"/{db}")
                        asyncio.run(direct(backend, db, docs[: n // 2]))  # half exists already
                    direct_s = asyncio.run(
                        direct(backend, f"direct-{audit}-{n}", docs)
                    )  # that half: 409 rows
                    _, info = backend.request("GET", f"/import-{audit}-{n}")  # the preloaded half: not ours
                    preloaded = info.get("update_seq", 0) if isinstance(info, dict) else 0
                    peak = [rss_mb(proc.pid)]
                    stop = threading.Event()
                    sampler = threading.Thread(target=sample_rss, args=(proc.pid, peak, stop))
                    sampler.start()
                    import_s, summary = asyncio.run(via_import(url, f"import-{audit}-{n}", auth, docs))
                    stop.set()
                    sampler.join()
                    assert summary == {"unchanged": n // 2, "created": n - n // 2}, summary
                    rows.append((audit, n, direct_s, import_s, peak[0], max(peak)))
                    if audit == "durable":
                        gaps[n] = asyncio.run(
                            gap_check(backend, f"import-{audit}-{n}", f"bench-audit-{audit}", preloaded)
                        )
    lines = [
        f"Command: `.venv/bin/python -m bench.import_throughput --sizes {' '.join(map(str, args.sizes))}"
        f"{' ' + flag if flag else ''}`",
        "(half of each input exists already with the same content; the direct baseline sends the same",
        "docs with plain `_bulk_docs` of 500 (the existing half comes back as conflicts), while the import",
        "reads each chunk first (`_bulk_get`), compares, writes only what changes and",
        f"answers for every doc; {label}, couchgate as a subprocess, once with the audit",
        "log off, on without intents (COUCHGATE_AUDIT_DURABLE=false: entries queue, a crash loses the queued",
        "ones) and on with them (durable, the default: an intent naming the chunk's writes is stored before",
        "each chunk's `_bulk_docs`); with the log on, every doc (created or unchanged) gets an audit entry,",
        "batched into one doc per 200 entries on the same backend).",
        "",
        "| audit log | docs | direct `_bulk_docs` | `/import` (NDJSON) | import docs/s | import / direct throughput | couchgate RSS before -> peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for audit, n, direct_s, import_s, before, top in rows:
        lines.append(
            f"| {MODES[audit]} | {n:,} | {direct_s:.2f} s ({n / direct_s:,.0f} docs/s) | {import_s:.2f} s | {n / import_s:,.0f} "
            f"| {direct_s / import_s:.2f}x | {before:.0f} -> {top:.0f} MB |"
        )
    for n, (seconds, missing) in gaps.items():
        lines.append(
            f"\n`couchgate audit verify`'s gap check over the {n - n // 2:,} docs the {n:,}-doc durable import "
            f"created: {seconds:.2f} s ({(n - n // 2) / seconds:,.0f} docs/s), {missing} writes without an entry."
        )
    write_section(f"Import throughput: {name}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
