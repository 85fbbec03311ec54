"""What a local append-only journal with fsync would cost per audited write (the crash-proof
audit alternative not chosen; see docs/benchmarks.md, "Crash-proof audit").

    .venv/bin/python -m bench.journal_fsync [--records 2000] [--group 1 8]

Appends intent-sized records (about 500 bytes of JSON) to a file in the project's directory
and fsyncs, one fsync per group of `--group` records (group commit: the writes that arrive
while an fsync runs share the next one). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import orjson

from bench.common import write_section
from proxy.devserver.backend import PROJECT_ROOT

RECORD = orjson.dumps({"action": "intent", "user": "chw1", "db": "medic", "details": {"writes": [["x" * 36, None, 2]]},
                       "request_id": "0" * 32, "path": "/medic/_bulk_docs", "pad": "p" * 250}) + b"\n"  # fmt: skip


def run(records: int, group: int) -> tuple[float, float]:
    """(records per second, median ms per fsync)."""
    with tempfile.NamedTemporaryFile(dir=PROJECT_ROOT, prefix=".journal-bench-") as handle:
        fd = handle.fileno()
        syncs: list[float] = []
        started = time.perf_counter()
        for i in range(0, records, group):
            os.write(fd, RECORD * min(group, records - i))
            before = time.perf_counter()
            os.fsync(fd)
            syncs.append(time.perf_counter() - before)
        total = time.perf_counter() - started
    return records / total, statistics.median(syncs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--group", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    lines = [
        f"Command: `.venv/bin/python -m bench.journal_fsync --records {args.records} "
        f"--group {' '.join(map(str, args.group))}` (a file on this machine's disk, {len(RECORD)}-byte records).",
        "",
        "| records per fsync | records/s | median fsync |",
        "|---|---|---|",
    ]
    for group in args.group:
        rate, ms = run(args.records, group)
        lines.append(f"| {group} | {rate:,.0f} | {ms:.2f} ms |")
    write_section("Crash-proof audit: a local journal (measured, not chosen)", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
