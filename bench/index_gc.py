"""What Python's cyclic garbage collector costs with a large scope index in memory.

    .venv/bin/python -m bench.index_gc [--preset 1m]

Builds a `ScopeIndex` in-process from the demo data set (no backend, no couchgate), then
times, with the index's objects in the collected generations and again after
`gc.freeze()`:
- a full collection (`gc.collect()`), what an automatic generation-2 collection costs;
- the automatic collections while a workload like the one after the build runs:
  request-sized garbage (cycles included) and a stream of changed docs filed into the
  index (300,000 by default, enough to trigger a full collection without the freeze).
Prints a small table; nothing is written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

from proxy.access.scope_index import ScopeIndex
from proxy.seed.generator import preset

REFILED_PER_ROUND = 1000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build(name: str) -> tuple[ScopeIndex, list[dict[str, Any]]]:
    index = ScopeIndex()
    sample: list[dict[str, Any]] = []
    for n, doc in enumerate(preset(name).docs()):
        doc["_rev"] = f"1-{n:032x}"
        index.apply(doc, n, leaves=(doc["_rev"],))
        if n % 50 == 0 and len(sample) < 20_000:
            sample.append(doc)
    return index, sample


def full_collections(times: int = 3) -> float:
    pauses = []
    for _ in range(times):
        t = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - t) * 1000)
    return statistics.median(pauses)


class Pauses:
    """Every automatic collection's duration, by generation (through `gc.callbacks`)."""

    def __init__(self) -> None:
        self.by_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.by_gen[info["generation"]].append((time.perf_counter() - self._start) * 1000)


def workload(index: ScopeIndex, sample: list[dict[str, Any]], rounds: int) -> Pauses:
    """Garbage like that of requests (dicts, lists, cycles) and changed docs re-filed into
    the index (their new entries outlive the young generations, as after a real sync)."""
    pauses = Pauses()
    gc.callbacks.append(pauses)
    try:
        for r in range(rounds):
            for _ in range(200):
                garbage: dict[str, Any] = {"rows": [{"id": str(j), "doc": {"n": j}} for j in range(20)]}
                garbage["self"] = garbage  # a cycle, as aiohttp's request objects make
            for k in range(REFILED_PER_ROUND):
                doc = sample[(r * REFILED_PER_ROUND + k) % len(sample)]
                changed = {**doc, "_rev": f"{r + 2}-{k:032x}"}
                index.apply(changed, None, leaves=(changed["_rev"],))
    finally:
        gc.callbacks.remove(pauses)
    return pauses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="1m", help="demo data size: 100k, 1m, or a doc count")
    parser.add_argument(
        "--rounds", type=int, default=300, help=f"workload rounds of {REFILED_PER_ROUND} changed docs each"
    )
    args = parser.parse_args()
    before = rss_mb()
    t = time.perf_counter()
    index, sample = build(args.preset)
    built_s = time.perf_counter() - t
    tracked = len(gc.get_objects())
    print(f"{len(index.entries):,} docs indexed in {built_s:.1f} s, {rss_mb() - before:.0f} MB, "
          f"{tracked:,} objects tracked by the collector")  # fmt: skip
    rows = []
    for frozen in (False, True):
        if frozen:
            gc.collect()
            gc.freeze()
        full = full_collections()
        pauses = workload(index, sample, args.rounds)
        gen2 = pauses.by_gen[2]
        every = [p for gen in pauses.by_gen.values() for p in gen]
        rows.append(
            f"| {'yes' if frozen else 'no'} | {gc.get_freeze_count():,} | {full:.0f} ms "
            f"| {len(gen2)} | {max(gen2, default=0):.0f} ms | {max(every, default=0):.1f} ms |"
        )
    print("| frozen | objects frozen | full `gc.collect()` | automatic gen-2 collections "
          "| longest gen-2 pause | longest pause of any generation |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
