"""The cost of the token check and the login throttle on the hot path: requests/s of an
authenticated `GET /{db}/{id}` through couchgate, with and without each, in one run.

    .venv/bin/python -m bench.auth_hot_path [--requests 4000] [--clients 16]

One in-memory pouchdb-server holding one small doc and one member user; one couchgate
process per variant (started in turn, the same settings but the variant's):
- bearer token, check on: the token's user is checked against CouchDB (cached for
  COUCHGATE_AUTH_CACHE_SECONDS, 30 s: one check in the run) on every request;
- bearer token, check off: the same process with `TokenGuard.check` replaced by nothing;
- Basic, throttle on / off (`COUCHGATE_LOGIN_THROTTLE`): the credential cached (30 s), so
  the throttle is not consulted on a cache hit;
- Basic, no cache, throttle on / off: `COUCHGATE_AUTH_CACHE_SECONDS=0`, every request asks
  CouchDB's `/_session` and consults the throttle.
Each variant: 300 requests to warm up, then `--requests` requests from `--clients`
concurrent clients. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from bench.common import couchgate, write_section
from proxy.devserver.backend import PouchServer

DB = "bench-auth"
USER, PASSWORD = "reader", "reader-pass"
SECTION = "Authentication on the hot path"


def serve_without_token_check() -> None:
    """`couchgate serve`, with the token check replaced by nothing (the baseline)."""
    from proxy.auth.token_guard import TokenGuard
    from proxy.cli import main

    async def unchecked(self: TokenGuard, claims: object) -> None:
        return None

    TokenGuard.check = unchecked  # type: ignore[method-assign,assignment]
    raise SystemExit(main(["serve"]))


async def token(url: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/_couchgate/token", json={"name": USER, "password": PASSWORD}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return "Bearer " + str((await resp.json())["token"])


async def rate(url: str, auth: str, requests: int, clients: int) -> float:
    headers = {"Authorization": auth, "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with http.get(f"{url}/{DB}/doc") as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        async def batch(total: int) -> None:
            await asyncio.gather(*(worker(total // clients) for _ in range(clients)))

        await batch(300)
        started = time.perf_counter()
        await batch(requests)
        return (requests // clients * clients) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    secret = "bench-secret-" + "x" * 40
    variants = [
        ("bearer token, check on", "token", {}, False),
        ("bearer token, check off", "token", {}, True),
        ("Basic, cached, throttle on", "basic", {}, False),
        ("Basic, cached, throttle off", "basic", {"COUCHGATE_LOGIN_THROTTLE": "false"}, False),
        ("Basic, no cache, throttle on", "basic", {"COUCHGATE_AUTH_CACHE_SECONDS": "0"}, False),
        ("Basic, no cache, throttle off", "basic",
         {"COUCHGATE_AUTH_CACHE_SECONDS": "0", "COUCHGATE_LOGIN_THROTTLE": "false"}, False),
    ]  # fmt: skip
    results = []
    with PouchServer() as backend:
        backend.request("PUT", f"/{DB}")
        backend.request("PUT", f"/{DB}/_security", {"members": {"roles": ["reader"]}, "admins": {}})
        backend.request("PUT", f"/{DB}/doc", {"type": "person", "name": "Ann"})
        backend.request("PUT", f"/_users/org.couchdb.user:{USER}",
                        {"name": USER, "password": PASSWORD, "roles": ["reader"], "type": "user"})  # fmt: skip
        for label, kind, env, unchecked in variants:
            env = {"COUCHGATE_JWT_SECRET": secret, "COUCHGATE_AUDIT_ENABLED": "false", **env}
            command = (
                [sys.executable, "-m", "bench.auth_hot_path", "--serve-unchecked"] if unchecked else None
            )
            with couchgate(backend, DB, command=command, **env) as (url, _):
                from proxy.couch.client import basic_auth_header

                auth = asyncio.run(token(url)) if kind == "token" else basic_auth_header(USER, PASSWORD)
                per_second = asyncio.run(rate(url, auth, args.requests, args.clients))
            results.append((label, per_second))
            print(f"{label}: {per_second:,.0f} requests/s", flush=True)
    rates = dict(results)
    rows = [
        ("bearer token: user check", rates["bearer token, check on"], rates["bearer token, check off"]),
        ("Basic, credential cached: throttle", rates["Basic, cached, throttle on"], rates["Basic, cached, throttle off"]),
        ("Basic, no cache (every request asks CouchDB): throttle", rates["Basic, no cache, throttle on"],
         rates["Basic, no cache, throttle off"]),
    ]  # fmt: skip
    body = (
        f"Command: `.venv/bin/python -m bench.auth_hot_path --requests {args.requests} --clients {args.clients}`\n"
        f"(one run; requests/s of an authenticated `GET /{{db}}/{{id}}` of a small doc through couchgate\n"
        "to an in-memory pouchdb-server, audit log off, each variant its own couchgate process\n"
        'started in turn, the load generator in the same run on this 2-core machine; "off" for the\n'
        "token check is `TokenGuard.check` replaced by nothing, for the throttle\n"
        "`COUCHGATE_LOGIN_THROTTLE=false`; the token's user is checked against CouchDB at most every\n"
        "`COUCHGATE_AUTH_CACHE_SECONDS` (30 s), a cached Basic credential skips the throttle).\n\n"
        "| what | with it | without it | with / without |\n|---|---|---|---|\n"
        + "".join(f"| {what} | {on:,.0f} | {off:,.0f} | {on / off:.2f}x |\n" for what, on, off in rows)
    )
    write_section(SECTION, body)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-unchecked"]:
        serve_without_token_check()
    main()
