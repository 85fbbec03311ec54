"""The scope index at national scale: memory per doc, snapshot save and load, and a user's
feed, in-process (no backend, no couchgate), from the demo data set.

    .venv/bin/python -m bench.index_scale --preset 1m --preset 10000000 [--label NAME]

Each preset runs in a fresh child process, so its RSS is its own:
- build: the index fed every doc of the demo generator (`ScopeIndex.apply`, revisions
  shaped like CouchDB's), timed; memory is the process's RSS growth over the empty index,
  after a full collection, divided by the docs indexed (the generator's docs are not kept);
- feeds (after `gc.freeze()`, as couchgate freezes what it built): `readable_entries`
  for the demo's `chw1` (one CHW area) and `supervisor` (a health center), computed cold
  (the index's per-user caches dropped), CPU time, median of 3;
- snapshot: `Snapshots.save` / `Snapshots.load` (proxy/offline/snapshot.py, signed, to a
  temporary directory), timed, the file's size, the RSS the load needs at its peak (over
  the process's RSS before it), and the same feeds read from the loaded index (checked
  equal to the built one's).
Prints a table (docs/benchmarks.md, "Scope index at scale", has the results).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.index_gc import rss_mb
from proxy.access.config import AppSettings, UserCtx
from proxy.access.scope_index import ScopeIndex
from proxy.offline.snapshot import Snapshots
from proxy.seed.generator import SETTINGS, preset

USERS = {
    "chw1": UserCtx("chw1", ("chw",), ("d0-hc0-a0",), "d0-hc0-a0-chw"),
    "supervisor": UserCtx("supervisor", ("chw_supervisor",), ("d0-hc0",), "d0-hc0-sup"),
}


def feed_ms(index: ScopeIndex, user: UserCtx, settings: AppSettings) -> tuple[float, list[tuple[str, int]]]:
    times, found = [], []
    for _ in range(3):
        index._feeds.clear()
        index._subjects.clear()
        t = time.process_time()  # CPU time: the machine's other load does not count
        entries = index.readable_entries(user, settings)
        times.append((time.process_time() - t) * 1000)
        found = [(e.id, e.ordinal) for e in entries]
    return statistics.median(times), found


def one(name: str) -> dict[str, Any]:
    settings = AppSettings.from_doc(SETTINGS)
    gc.collect()
    index = ScopeIndex()
    index.set_person_types(settings.person_types)
    before = rss_mb()
    t = time.perf_counter()
    for n, doc in enumerate(preset(name).docs()):
        doc["_rev"] = f"1-{n:032x}"
        index.apply(doc, n, leaves=(doc["_rev"],))
    built = time.perf_counter() - t
    gc.collect()
    grown = rss_mb() - before
    gc.freeze()  # as couchgate does with what it built (proxy/offline/sync.py)
    docs = len(index.entries)
    out: dict[str, Any] = {"preset": name, "docs": docs, "build_s": built, "mb": grown,
                           "bytes_per_doc": grown * 1024 * 1024 / docs}  # fmt: skip
    feeds = {}
    for user_name, user in USERS.items():
        ms, found = feed_ms(index, user, settings)
        feeds[user_name] = found
        out[f"{user_name}_docs"], out[f"{user_name}_ms"] = len(found), ms
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = Snapshots(Path(tmp), "medic", b"k" * 32)
        t = time.perf_counter()
        size = store.save("bench", {"index": index})
        out["save_s"], out["file_mb"] = time.perf_counter() - t, size / 1e6
        del index
        gc.collect()
        resting = rss_mb()
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
        t = time.perf_counter()
        loaded = store.load("bench")
        out["load_s"] = time.perf_counter() - t
        out["load_peak_mb"] = peak_mb() - resting
        assert loaded is not None
        restored: ScopeIndex = loaded["index"]
        gc.freeze()
        assert len(restored.entries) == docs
        for user_name, user in USERS.items():
            ms, found = feed_ms(restored, user, settings)
            assert found == feeds[user_name], f"{user_name}'s feed differs after the load"
            out[f"{user_name}_loaded_ms"] = ms
    out["rss_peak_mb"] = peak_mb()
    return out


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def table(rows: list[dict[str, Any]], label: str) -> list[str]:
    lines = [
        f"| {label} | docs | build | index memory (RSS growth) | per doc | snapshot save | load | file "
        "| load's peak RSS | chw1 feed (docs, cold) | supervisor feed (docs, cold) | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load_peak = f"{r['load_peak_mb']:.0f} MB" if "load_peak_mb" in r else "-"
        lines.append(
            f"| {r['label']} | {r['docs']:,} | {r['build_s']:.1f} s | {r['mb']:.0f} MB | {r['bytes_per_doc']:.0f} B "
            f"| {r['save_s']:.2f} s | {r['load_s']:.2f} s | {r['file_mb']:.0f} MB | {load_peak} "
            f"| {r['chw1_ms']:.1f} ms ({r['chw1_docs']:,}) | {r['supervisor_ms']:.1f} ms ({r['supervisor_docs']:,}) "
            f"| {r['rss_peak_mb']:.0f} MB |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--preset", action="append", help="demo data size: 100k, 1m, or a doc count (repeatable)"
    )
    parser.add_argument("--label", default="this tree", help="what the rows are (e.g. a commit)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for name in args.preset or ["1m"]:
        done = subprocess.run([sys.executable, "-m", "bench.index_scale", "--one", name],
                              check=True, capture_output=True, text=True)  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["label"] = args.label
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print("\n".join(table(rows, "code")))


if __name__ == "__main__":
    main()
