"""Where a sync's time goes: couchgate in this process, every client request and every
upstream call timed, while real PouchDB pulls or pushes through it.

    .venv/bin/python -m bench.trace --backend http://admin:pass@127.0.0.1:5984 --op pull --user chw1
    .venv/bin/python -m bench.trace --backend ... --op push --user chw1 --docs 500 [--edit] [--timeline]

Expects the demo data already loaded in `medic` (e.g. by bench.replication or bench.push, or
`proxy.seed.loader`). Prints, per kind of request (method and path with ids folded), how
many there were and the time spent: as the client saw it through couchgate, and upstream
from couchgate, plus couchgate's own CPU time. Nothing is written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.common import POUCH_JS, add_backend_arg, open_backend
from bench.push import SUBMITTERS, people_in, reports
from proxy.app import create_app
from proxy.couch.client import CouchClient, basic_auth_header
from proxy.devserver.backend import NODE_DIR, free_port
from proxy.settings import load_settings

Stats = dict[str, list[float]]
# (start ms, end ms, "client" | "upstream", request): every request of a run, for --timeline.
Events = list[tuple[float, float, str, str]]
EVENTS: Events = []


def write_reports(path: str, n: int, submitter: list[str], patients: list[str]) -> None:
    Path(path).write_bytes(orjson.dumps(reports(n, submitter, patients)))


def fold(path: str) -> str:
    """`/medic/some-id/att` -> `/medic/{doc}/{att}`; `_` endpoints kept."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        if i == 0 or (part.startswith("_") and part not in ("_design",)):
            out.append(part if part != "_local" else "_local/{id}")
            if part == "_local":
                break
        else:
            out.append("{doc}" if i == 1 else "{att}")
    return "/" + "/".join(out)


def timed(stats: Stats, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(self: CouchClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(self, method, path, *args, **kwargs)
        finally:
            stats[f"{method} {fold(path)}"].append((time.perf_counter() - started) * 1000)
            EVENTS.append((started * 1000, time.perf_counter() * 1000, "upstream", f"{method} {fold(path)}"))

    return wrapper


def timed_stream(stats: Stats, fn: Any) -> Any:
    @asynccontextmanager
    async def wrapper(self: CouchClient, method: str, path: str, **kwargs: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async with fn(self, method, path, **kwargs) as resp:
                yield resp
        finally:
            stats[f"{method} {fold(path)} (stream)"].append((time.perf_counter() - started) * 1000)

    return wrapper


def report(title: str, stats: Stats) -> None:
    print(f"\n{title}\n| request | count | total ms | mean ms |\n|---|---|---|---|")
    for key, values in sorted(stats.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {key} | {len(values)} | {sum(values):.0f} | {sum(values) / len(values):.1f} |")


def timeline(origin: float) -> None:
    """Every request of the run by its start: client requests, and under them (indented)
    the upstream calls couchgate made, in ms since the run began."""
    print("\nTimeline (ms since the run began: start, end, duration)")
    for start, end, kind, label in sorted(EVENTS):
        indent = "    " if kind == "upstream" else ""
        print(f"{start - origin:8.1f} {end - origin:8.1f} {end - start:6.1f}  {indent}{label}")


async def run(args: argparse.Namespace) -> None:
    with open_backend(args.backend) as backend:
        settings = load_settings(
            couch_url=backend.url, couch_user=backend.admin_user, couch_password=backend.admin_password,
            db="medic", port=free_port(), log_level="WARNING", audit_enabled=not args.no_audit,
        )  # fmt: skip
        client_side: Stats = defaultdict(list)
        upstream: Stats = defaultdict(list)
        CouchClient.json = timed(upstream, CouchClient.json)  # type: ignore[method-assign]
        CouchClient.stream = timed_stream(upstream, CouchClient.stream)  # type: ignore[method-assign]

        @web.middleware
        async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                return await handler(request)
            finally:
                client_side[f"{request.method} {fold(request.path)}"].append(
                    (time.perf_counter() - started) * 1000
                )
                label = f"{request.method} {fold(request.path)}"
                EVENTS.append((started * 1000, time.perf_counter() * 1000, "client", label))

        app = create_app(settings)
        app.middlewares.insert(0, timing)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", settings.port)
        await site.start()
        url = f"http://127.0.0.1:{settings.port}"
        try:
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(f"{url}/_couchgate/ready") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.05)
            auth = {"basic": [args.user, f"{args.user}-pass"]}
            cmd: dict[str, Any] = {"op": "pull_timed", "url": f"{url}/medic", "auth": auth, "noops": 1}
            docs_file = None
            if args.op == "push":
                async with (
                    aiohttp.ClientSession(
                        headers={"Authorization": basic_auth_header(args.user, f"{args.user}-pass")}
                    ) as http,
                    http.get(f"{url}/medic/_all_docs?include_docs=true") as r,
                ):
                    patients = people_in(orjson.loads(await r.read()))
                submitter = SUBMITTERS[args.user]
                fd, docs_file = tempfile.mkstemp(suffix=".json")
                os.close(fd)
                cmd = {
                    "op": "push_timed",
                    "url": f"{url}/medic",
                    "auth": auth,
                    "docs_file": docs_file,
                    "edit": args.edit,
                }
            for run_number in range(1, args.repeat + 1):
                if docs_file:  # new docs each run: a push of the same ids again writes nothing
                    write_reports(docs_file, args.docs, submitter, patients)
                client_side.clear()
                upstream.clear()
                EVENTS.clear()
                profiler = cProfile.Profile() if args.profile else None
                if profiler is not None:
                    profiler.enable()
                cpu, times = time.process_time(), os.times()
                started = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    "node", str(POUCH_JS), orjson.dumps(cmd).decode(), stdout=asyncio.subprocess.PIPE,
                    env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
                )  # fmt: skip
                out, _ = await proc.communicate()
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                user, system = (now - then for now, then in zip(os.times()[:2], times[:2], strict=True))
                if profiler is not None:
                    profiler.disable()
                print(f"\n## run {run_number}: {out.decode().strip().splitlines()[-1][:300]}")
                print(
                    f"\nwall {wall * 1000:.0f} ms; couchgate CPU (this process) {cpu * 1000:.0f} ms "
                    f"(user {user * 1000:.0f}, system {system * 1000:.0f})"
                )
                report("Client requests through couchgate", client_side)
                report("couchgate's upstream calls", upstream)
                if args.timeline:
                    timeline(started * 1000)
                if profiler is not None:
                    print(f"\ncouchgate's own functions, by cumulative CPU time (top {args.profile}):")
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"proxy/", args.profile)
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
            if docs_file:
                os.unlink(docs_file)
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_backend_arg(parser)
    parser.add_argument("--op", choices=["pull", "push"], default="pull")
    parser.add_argument("--user", default="chw1")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--edit", action="store_true")
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="run the op this many times, each reported")
    parser.add_argument("--timeline", action="store_true", help="also print every request by its start")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also print the top N of a cProfile"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
