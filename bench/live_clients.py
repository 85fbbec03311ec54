"""Many live offline clients on one couchgate process: what each idle one costs, and how
fast a change that concerns all of them reaches every one.

    .venv/bin/python -m bench.live_clients --clients 5000 [--clients 20000] [--preset small] [--backend ...]

For each `--clients N`: the demo data set (`--preset`) is loaded into the backend and
couchgate started as a subprocess (bench/common.py). Each of the demo's offline users
(`supervisor`, `chw1`..) takes a caught-up token (`GET _changes?since=now`); then N
clients, the users' devices in turn, each open `GET _changes?feed=longpoll&heartbeat=10000
&timeout=300000&style=all_docs&since=<token>` as PouchDB's live replication does, from
`--procs` load processes of their own (raw HTTP/1.1 over asyncio streams), at most
PER_ADDRESS clients per source address (127.1.x.y: past one address's port range, and below
couchgate's connections-per-client cap, as phones on their own addresses are). A client is
held once its response head arrived (couchgate is then waiting for a change). After
SETTLE seconds (each client has had a heartbeat) couchgate's RSS is read again: its growth
over the RSS before the clients, divided by N, is the memory of one idle live client. Then
the global `branding` doc (every user reads it) is updated upstream, and each client's
arrival time of the row (from just before the write) gives p50/p99/max. Errors: a client
that could not connect, got anything but 200, lost its connection, or whose answer did not
name the doc. Results go to docs/benchmarks.md ("Live clients").

The process's open-file limit is raised to what N clients need (the hard limit too where
the process may: couchgate inherits it, and raises its soft limit to it at start), and
couchgate's connection cap set to the limit less CAP_MARGIN (offline live feeds hold no
connection upstream). Where the hard limit stays below N + CAP_MARGIN, the clients past
the cap get 503 and count as errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import resource
import time
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    get_json,
    open_backend,
    percentile,
    rss_mb,
    write_section,
)
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import Backend
from proxy.seed.generator import OFFLINE, preset
from proxy.seed.loader import load

DOC = "branding"  # a global doc: every offline user reads it
PER_ADDRESS = 100  # clients per source address (couchgate's default cap per address is 128)
SETTLE = 12.0  # seconds after the last client is held: every one has had a heartbeat (10 s)
CONNECTING = 100  # connections a load process opens at once
TIMEOUT_MS = 300_000  # couchgate's longest longpoll
CAP_MARGIN = 300  # files couchgate keeps besides client connections (upstream pool, listener, logs)


def source(i: int) -> str:
    a = i // PER_ADDRESS
    return f"127.1.{a // 250}.{a % 250 + 1}"


def raise_files(needed: int) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        try:  # as root (CAP_SYS_RESOURCE) the hard limit may go up too
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- a load process ----------------------------------------------------------------------


class Client:
    __slots__ = ("arrival", "error", "heartbeats")

    def __init__(self) -> None:
        self.arrival = 0.0
        self.error = ""
        self.heartbeats = 0


async def live(host: str, port: int, request: bytes, local: str, held: asyncio.Event, client: Client,
               gate: asyncio.Semaphore, count: list[int], total: int) -> None:  # fmt: skip
    writer = None
    counted = False

    def counts() -> None:
        nonlocal counted
        if not counted:
            counted = True
            count[0] += 1
            if count[0] == total:
                held.set()

    try:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0), limit=1 << 20)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        counts()
        status = head.split(b" ", 2)[1]
        if status != b"200":
            client.error = f"status {status.decode()}: {(await reader.read(300)).decode(errors='replace')}"
            return
        body = bytearray()
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data = (await reader.readexactly(size + 2))[:-2]
            if not body and not data.strip():
                client.heartbeats += 1
                continue
            if not body:
                client.arrival = time.monotonic()
            body += data
        answer = orjson.loads(body)
        if DOC not in [row.get("id") for row in answer.get("results", [])]:
            client.error = f"answer without {DOC}: {bytes(body[:200])!r}"
    except Exception as exc:  # every failure is counted and reported
        client.error = f"{type(exc).__name__}: {exc}"
        counts()
    finally:
        if writer is not None:
            writer.close()


async def load_process(conn: Connection, url: str, requests: list[tuple[bytes, str]]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    held = asyncio.Event()
    gate = asyncio.Semaphore(CONNECTING)
    count = [0]
    clients = [Client() for _ in requests]
    tasks = [
        asyncio.create_task(live(host, port, req, local, held, c, gate, count, len(requests)))
        for (req, local), c in zip(requests, clients, strict=True)
    ]
    await held.wait()
    conn.send(("held", sum(1 for c in clients if not c.error), [c.error for c in clients if c.error][:5]))
    await asyncio.wait(tasks, timeout=TIMEOUT_MS / 1000 + 30)
    for task in tasks:
        task.cancel()
    conn.send((
        "done",
        [c.arrival for c in clients if c.arrival and not c.error],
        [c.error or "no answer" for c in clients if c.error or not c.arrival],
        sum(c.heartbeats for c in clients),
    ))  # fmt: skip


def load_main(conn: Connection, url: str, requests: list[tuple[bytes, str]], files: int) -> None:
    raise_files(files)
    asyncio.run(load_process(conn, url, requests))


# -- the run -----------------------------------------------------------------------------


def request_for(url: str, user: str, token: str) -> bytes:
    parts = urlsplit(url)
    auth = "Basic " + base64.b64encode(f"{user}:{user}-pass".encode()).decode()
    path = (f"/medic/_changes?feed=longpoll&heartbeat=10000&timeout={TIMEOUT_MS}&style=all_docs"
            f"&since={quote(token, safe='')}")  # fmt: skip
    return (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {auth}\r\n"
            "Accept: application/json\r\n\r\n").encode()  # fmt: skip


def touch(backend: Backend) -> None:
    """Update the global doc upstream (every user's devices hear of it)."""
    status, doc = backend.request("GET", f"/medic/{DOC}")
    assert status == 200 and isinstance(doc, dict), doc
    status, body = backend.request("PUT", f"/medic/{DOC}", {**doc, "title": f"couchgate {time.time()}"})
    assert status in (201, 202), body


def measure(backend: Backend, users: list[str], clients: int, procs: int) -> dict[str, Any]:
    files = raise_files(2 * clients + 4096)
    # Offline users' live feeds hold no connection upstream: the default cap (half the files,
    # for online users' feeds) would refuse half of them where the hard limit cannot be raised.
    cap = str(files - CAP_MARGIN)
    with couchgate(backend, "medic", COUCHGATE_MAX_CONNECTIONS=cap) as (gateway, proc):
        tokens = {}
        for user in users:  # also brings the index level and caches each user's credentials
            auth = basic_auth_header(user, f"{user}-pass")
            tokens[user] = get_json(f"{gateway}/medic/_changes?since=now", auth)["last_seq"]
        time.sleep(2)
        before = rss_mb(proc.pid)
        requests = [
            (request_for(gateway, users[i % len(users)], tokens[users[i % len(users)]]), source(i))
            for i in range(clients)
        ]
        ctx = multiprocessing.get_context("spawn")
        pipes, workers = [], []
        for p in range(procs):
            ours, theirs = ctx.Pipe()
            worker = ctx.Process(target=load_main, args=(theirs, gateway, requests[p::procs], files))
            worker.start()
            pipes.append(ours)
            workers.append(worker)
        started = time.monotonic()
        held, first_errors = 0, []
        for pipe in pipes:
            _, ok, errors = pipe.recv()
            held += ok
            first_errors += errors
        opened_s = time.monotonic() - started
        time.sleep(SETTLE)
        idle = rss_mb(proc.pid)
        t0 = time.monotonic()
        touch(backend)
        arrivals: list[float] = []
        errors: list[str] = []
        heartbeats = 0
        for pipe in pipes:
            _, got, failed, beats = pipe.recv()
            arrivals += got
            errors += failed
            heartbeats += beats
        for worker in workers:
            worker.join(timeout=30)
        latencies = [(a - t0) * 1000 for a in arrivals]
    return {
        "clients": clients,
        "users": len(users),
        "files": files,
        "cap": cap,
        "held": held,
        "opened_s": opened_s,
        "rss_before_mb": before,
        "rss_idle_mb": idle,
        "per_client_kb": (idle - before) * 1024 / max(held, 1),
        "arrived": len(latencies),
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "max_ms": max(latencies) if latencies else float("nan"),
        "errors": len(errors),
        "error_sample": sorted(set(errors))[:3] + first_errors[:2],
        "heartbeats": heartbeats,
        "load": os.getloadavg()[0],
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | users | held (opened in) | couchgate RSS before -> idle | per idle client | arrival p50 | p99 "
        "| max | errors | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['clients']:,} | {r['users']} | {r['held']:,} ({r['opened_s']:.0f} s) | {r['rss_before_mb']:.0f} -> {r['rss_idle_mb']:.0f} MB "
            f"| {r['per_client_kb']:.1f} KB | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['max_ms']:.0f} ms "
            f"| {r['errors']} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, action="append", help="live clients (repeatable)")
    parser.add_argument("--preset", default="small", help="demo data set (proxy.seed.generator)")
    parser.add_argument("--procs", type=int, default=4, help="load processes")
    add_backend_arg(parser)
    args = parser.parse_args()
    counts = args.clients or [5000]
    results = []
    with open_backend(args.backend) as backend:
        data = preset(args.preset)
        asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, "medic", data))
        users = [u.name for u in data.users if set(u.roles) & set(OFFLINE)]
        name = describe(backend)
        for n in counts:
            results.append(measure(backend, users, n, args.procs))
            print(table(results), results[-1]["error_sample"], flush=True)
    flag = backend_flag(args.backend)
    body = "\n".join([
        f"Command: `.venv/bin/python -m bench.live_clients {' '.join(f'--clients {n}' for n in counts)}"
        f" --preset {args.preset} --procs {args.procs}{' ' + flag if flag else ''}` ({name}, couchgate and",
        f"{args.procs} load processes on this 2-core machine; each client a device of one of the demo's",
        f"{len(users)} offline users, `feed=longpoll&heartbeat=10000&timeout={TIMEOUT_MS}&style=all_docs` from",
        "a caught-up token; RSS growth over couchgate's RSS before the clients, divided by the clients,",
        f"{SETTLE:.0f} s after the last was held; arrival: from just before an upstream write of the global",
        f"`{DOC}` doc to its row at each client; couchgate's open-file limit {results[-1]['files']:,} (the",
        f"hard limit here), `COUCHGATE_MAX_CONNECTIONS={results[-1]['cap']}`).",
        "",
        table(results),
    ])  # fmt: skip
    write_section("Live clients", body)


if __name__ == "__main__":
    main()
