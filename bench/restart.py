"""A couchgate restart against an unchanged database: how long until it is ready again.

    .venv/bin/python -m bench.restart --preset 1m --rounds 3 [--backend couchdb:PORT] [--write]

Loads the demo data set into the backend, then times couchgate (a subprocess) from its
start to `/_couchgate/ready` answering 200:
- without `COUCHGATE_STATE_DIR`: the index is built from CouchDB's `_changes`;
- with it, the first start (nothing saved yet: built, then saved at shutdown), then
  `--rounds` restarts that take up the saved snapshot and catch up with CouchDB.
Also the snapshot's size on disk and couchgate's RSS once ready. `--write` adds the table
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    load_note,
    median,
    open_backend,
    rss_mb,
    short_name,
    wait_ready,
    write_section,
)
from proxy.seed.generator import preset
from proxy.seed.loader import load

SECRET = "bench-since-secret-" + "x" * 32


def start_to_ready(backend: Any, state: Path | None) -> tuple[float, float]:
    """Seconds from the process's start to ready, and its RSS (MB) then."""
    env = {"COUCHGATE_SINCE_SECRET": SECRET}
    if state is not None:
        env["COUCHGATE_STATE_DIR"] = str(state)
    started = time.monotonic()
    with couchgate(backend, "medic", **env) as (url, proc):
        wait_ready(url, within=3600)
        return time.monotonic() - started, rss_mb(proc.pid)


def measure(spec: str, preset_name: str, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"preset": preset_name}
    with open_backend(spec) as backend, tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        result["backend"], result["backend_name"] = describe(backend), short_name(backend)
        data = preset(preset_name)
        report = asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, "medic", data))
        result["docs"] = report.docs_total
        result["build_s"], result["build_rss_mb"] = start_to_ready(backend, None)
        state = Path(tmp)
        result["first_s"], _ = start_to_ready(backend, state)
        (snap,) = state.glob("index-*.snap")
        result["snap_mb"] = snap.stat().st_size / 1e6
        restarts = [start_to_ready(backend, state) for _ in range(rounds)]
        result["restart_s"] = median([r[0] for r in restarts])
        result["restart_rss_mb"] = median([r[1] for r in restarts])
    return result


def table(r: dict[str, Any], rounds: int) -> str:
    return "\n".join(
        [
            "| data | start to ready, no state dir (built from `_changes`) | first start with a state dir "
            f"| restart with its snapshot (median of {rounds}) | snapshot file | RSS when ready: built / restored |",
            "|---|---|---|---|---|---|",
            f"| {r['docs']:,} | {r['build_s']:.1f} s | {r['first_s']:.1f} s | {r['restart_s']:.1f} s "
            f"| {r['snap_mb']:.0f} MB | {r['build_rss_mb']:.0f} MB / {r['restart_rss_mb']:.0f} MB |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    add_backend_arg(parser)
    args = parser.parse_args()
    r = measure(args.backend, args.preset, args.rounds)
    command = " ".join(
        filter(None, [".venv/bin/python -m bench.restart", f"--preset {args.preset}",
                      f"--rounds {args.rounds}", backend_flag(args.backend)])
    )  # fmt: skip
    body = "\n".join(
        [
            f"Command: `{command}`",
            f"(couchgate as a subprocess against {r['backend']} holding the demo data set, unchanged",
            "between starts; start to `/_couchgate/ready` 200; each start after the first with a state dir",
            "takes up the snapshot saved at the previous one's shutdown and catches up with CouchDB).",
            "",
            table(r, args.rounds),
        ]
    )
    print(body + "\n\n" + load_note())
    if args.write:
        write_section(f"Restart with a saved index: {r['backend_name']}", body)


if __name__ == "__main__":
    main()
