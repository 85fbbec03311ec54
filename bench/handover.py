"""A device's no-op sync when it reaches another replica, or a restarted one, against a
no-op sync on the replica that issued its checkpoint.

    .venv/bin/python -m bench.handover [--preset 100k] [--rounds 5] [--backend couchdb:PORT] [--write]

Loads the demo data set, starts two couchgate replicas (subprocesses, one `since` secret,
replica A with a state dir) behind one address (a TCP relay standing where a load balancer
stands: PouchDB names its checkpoints after the URL it syncs with), and gives a CHW and a
supervisor one real PouchDB 9 device each, which pull everything through A. Then, per round
and device: `--noops` no-op pulls through A (their median: a normal no-op); the balancer
switches to B; the first no-op pull through B (its checkpoint is A's token) and B's
following no-ops; back to A. Last, A is stopped (its snapshot saved) and started again, and
the first no-op after the restart is timed against the restarted process's later ones.
Every no-op must pull nothing; the benchmark fails otherwise. The database does not change
during the rounds: a token placed on another replica re-sends the docs changed within the
replicas' clock skew of it, and here there are none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    POUCH_JS,
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    load_note,
    median,
    open_backend,
    short_name,
    wait_ready,
    write_section,
)
from proxy.devserver.backend import NODE_DIR
from proxy.seed.generator import preset
from proxy.seed.loader import load
from tests.balancer import Balancer

SECRET = "bench-since-secret-" + "y" * 32
USERS = ("chw1", "supervisor")
SKEW_SECONDS = 5


class Relay:
    """tests/balancer.py's relay on an event loop of its own thread (the benchmark blocks)."""

    def __init__(self, target: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.balancer = self._call(Balancer().start(target))
        self.url = self.balancer.url

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def switch(self, target: str) -> None:
        async def switch() -> None:
            self.balancer.switch(target)

        self._call(switch())

    def close(self) -> None:
        self._call(self.balancer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class Devices:
    """One Node process holding a PouchDB device per user (tests/e2e/pouch.js `session`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(POUCH_JS), orjson.dumps({"op": "session"}).decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        )  # fmt: skip

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = orjson.loads(self.proc.stdout.readline())
        if "error" in answer or answer.get("errors"):
            raise RuntimeError(f"pouch.js: {answer}")
        return answer

    def pull(self, user: str, url: str) -> dict[str, Any]:
        auth = {"basic": [user, f"{user}-pass"]}
        return self.ask({"cmd": "pull", "device": user, "url": f"{url}/medic", "auth": auth, "trace": True})

    def noop(self, user: str, url: str, writes: list[int] | None = None) -> float:
        """A no-op pull's ms; `writes` gets how many checkpoints it wrote (`PUT _local`)."""
        answer = self.pull(user, url)
        if answer["docs_written"]:
            raise RuntimeError(f"a no-op pull of {user} wrote {answer['docs_written']} docs")
        if writes is not None:
            writes.append(sum(1 for c in answer["calls"] if c["method"] == "PUT"))
        return float(answer["ms"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask({"cmd": "stop"})
        self.proc.kill()
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def replica(backend: Any, state: Path | None) -> Iterator[str]:
    env = {"COUCHGATE_SINCE_SECRET": SECRET}
    if state is not None:
        env["COUCHGATE_STATE_DIR"] = str(state)
    with couchgate(backend, "medic", None, **env) as (url, _):
        wait_ready(url, within=3600)
        yield url


def measure(spec: str, preset_name: str, rounds: int, noops: int) -> dict[str, Any]:
    result: dict[str, Any] = {"preset": preset_name, "users": {}, "rounds": rounds}
    times: dict[str, dict[str, list[float]]] = {
        u: {"a": [], "b_first": [], "b": [], "restart_first": [], "restart": [], "writes": []} for u in USERS
    }
    with open_backend(spec) as backend, tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        result["backend"], result["backend_name"] = describe(backend), short_name(backend)
        report = asyncio.run(
            load(backend.url, backend.admin_user, backend.admin_password, "medic", preset(preset_name))
        )
        result["docs"] = report.docs_total
        state = Path(tmp)
        devices = Devices()
        try:
            with replica(backend, None) as b_url:  # B first: its marks reach back before A's tokens
                with replica(backend, state) as a_url:
                    # A token is placed on another replica within the replicas' clock skew
                    # (COUCHGATE_CLOCK_SKEW_SECONDS, 5 s): one issued closer than that to the
                    # replicas' start would be placed at their start and its docs sent again.
                    time.sleep(SKEW_SECONDS + 1)
                    relay = Relay(a_url)
                    try:
                        for user in USERS:
                            result["users"][user] = devices.pull(user, relay.url)["docs_written"]
                        for _ in range(rounds):
                            for user in USERS:
                                t = times[user]
                                relay.switch(a_url)
                                t["a"].append(median([devices.noop(user, relay.url) for _ in range(noops)]))
                                relay.switch(b_url)
                                t["b_first"].append(devices.noop(user, relay.url, t["writes"]))
                                t["b"].append(median([devices.noop(user, relay.url) for _ in range(noops)]))
                        relay.switch(a_url)
                        for user in USERS:
                            devices.noop(user, relay.url)  # each device's token is A's again
                    finally:
                        relay.close()
                for _ in range(rounds):  # A stopped (snapshot saved), started again
                    with replica(backend, state) as a_url:
                        relay = Relay(a_url)
                        try:
                            for user in USERS:
                                times[user]["restart_first"].append(
                                    devices.noop(user, relay.url, times[user]["writes"])
                                )
                                times[user]["restart"].append(
                                    median([devices.noop(user, relay.url) for _ in range(noops)])
                                )
                        finally:
                            relay.close()
        finally:
            devices.close()
    result["writes"] = {u: sum(t.pop("writes")) for u, t in times.items()}
    result["times"] = {u: {k: median(v) for k, v in t.items()} for u, t in times.items()}
    return result


def table(r: dict[str, Any]) -> str:
    lines = [
        "| user | docs | no-op on A | first no-op on B | / A | B's later no-ops "
        "| first no-op after A restarts | / A | its later no-ops | checkpoints written by the first no-ops |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for user, t in r["times"].items():
        lines.append(
            f"| {user} | {r['users'][user]:,} | {t['a']:.1f} ms | {t['b_first']:.1f} ms | {t['b_first'] / t['a']:.2f}x "
            f"| {t['b']:.1f} ms | {t['restart_first']:.1f} ms | {t['restart_first'] / t['a']:.2f}x "
            f"| {t['restart']:.1f} ms | {r['writes'][user]} of {2 * r['rounds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="100k")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--noops", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    add_backend_arg(parser)
    args = parser.parse_args()
    r = measure(args.backend, args.preset, args.rounds, args.noops)
    command = " ".join(
        filter(None, [".venv/bin/python -m bench.handover", f"--preset {args.preset}",
                      f"--rounds {args.rounds}", backend_flag(args.backend)])
    )  # fmt: skip
    body = "\n".join(
        [
            f"Command: `{command}`",
            f"({r['docs']:,} docs in `medic` on {r['backend']}; two couchgate replicas as subprocesses with one",
            "`since` secret behind one address, PouchDB 9 devices in Node; medians over the rounds, each",
            f"round's 'no-op' the median of {args.noops} in a row; the first no-op on B resumes from A's",
            "token; the restart is A stopped (snapshot saved) and started again, the device's token A's).",
            "",
            table(r),
        ]
    )
    print(body + "\n\n" + load_note())
    if args.write:
        write_section(f"No-op sync on another replica and after a restart: {r['backend_name']}", body)


if __name__ == "__main__":
    main()
