"""The cost of the token check and the login throttle on the hot path: requests/s of an
authenticated `GET /{db}/{id}` through couchgate, with and without each, in one run.

    .venv/bin/python -m bench.auth_hot_path [--requests 2000] [--clients 16] [--rounds 5]

One in-memory pouchdb-server holding one small doc and one member user; one couchgate
process per variant (the same settings but the variant's):
- bearer token, check on: the token's user is checked against CouchDB (cached for
  COUCHGATE_AUTH_CACHE_SECONDS, 30 s: one check in the run) on every request;
- bearer token, check off: the same process with `TokenGuard.check` replaced by nothing;
- Basic, throttle on / off (`COUCHGATE_LOGIN_THROTTLE`): the credential cached (30 s), so
  the throttle is not consulted on a cache hit;
- Basic, no cache, throttle on / off: `COUCHGATE_AUTH_CACHE_SECONDS=0`, every request asks
  CouchDB's `/_session` and consults the throttle.
All six processes run at once; each round measures every variant in turn (300 requests to
warm up, then `--requests` from `--clients` concurrent clients), in a rotated order, and
the medians over the rounds go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack

import aiohttp

from bench.common import couchgate, median, write_section
from proxy.auth.throttle import LoginThrottle, ThrottleLimits
from proxy.auth.token_guard import TokenGuard
from proxy.auth.tokens import TokenService
from proxy.auth.users import UserInfoCache
from proxy.couch.client import CouchClient, basic_auth_header, new_session
from proxy.devserver.backend import PouchServer
from proxy.settings import load_settings

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


async def per_call_costs(backend: PouchServer, secret: str, calls: int = 50_000) -> tuple[float, float]:
    """CPU microseconds per call, warm: the token check (its user read once from the
    backend, then cached), and the throttle's question for a Basic credential it must ask
    CouchDB about (a cache miss). What a request pays on top of the same request without them."""
    settings = load_settings(
        couch_url=backend.url, couch_user=backend.admin_user, couch_password=backend.admin_password,
        db=DB, jwt_secret=secret, auth_cache_seconds=3600,
    )  # fmt: skip
    session = new_session(settings)
    try:
        couch = CouchClient(session, settings)
        guard = TokenGuard(couch, UserInfoCache(couch, DB, 3600), settings.auth_db, 3600)
        tokens = TokenService(settings)
        account = await guard.account(USER, fresh=True)
        claims = tokens.verify(tokens.issue(USER, ("reader",), account.credential)[0])
        await guard.check(claims)  # the reads, once
        started = time.process_time()
        for _ in range(calls):
            await guard.check(claims)
        check = (time.process_time() - started) / calls * 1e6
    finally:
        await session.close()
    throttle = LoginThrottle(ThrottleLimits())
    for i in range(1000):  # some names and addresses with failures on record
        throttle.failed(f"user{i}", f"10.0.{i // 250}.{i % 250}")
    started = time.process_time()
    for _ in range(calls):
        throttle.retry_after(USER, "10.1.2.3", PASSWORD)
    return check, (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="per variant and round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
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
    rates: dict[str, list[float]] = {label: [] for label, *_ in variants}
    with PouchServer() as backend, ExitStack() as stack:
        backend.request("PUT", f"/{DB}")
        backend.request("PUT", f"/{DB}/_security", {"members": {"roles": ["reader"]}, "admins": {}})
        backend.request("PUT", f"/{DB}/doc", {"type": "person", "name": "Ann"})
        backend.request("PUT", f"/_users/org.couchdb.user:{USER}",
                        {"name": USER, "password": PASSWORD, "roles": ["reader"], "type": "user"})  # fmt: skip
        targets = []
        for label, kind, env, unchecked in variants:
            env = {"COUCHGATE_JWT_SECRET": secret, "COUCHGATE_AUDIT_ENABLED": "false", **env}
            command = (
                [sys.executable, "-m", "bench.auth_hot_path", "--serve-unchecked"] if unchecked else None
            )
            url, _ = stack.enter_context(couchgate(backend, DB, command=command, **env))
            auth = asyncio.run(token(url)) if kind == "token" else basic_auth_header(USER, PASSWORD)
            targets.append((label, url, auth))
        for round_ in range(args.rounds):
            # Every variant in every round, in a rotated order: drift in the machine's load
            # falls on all of them alike.
            shift = round_ % len(targets)
            for label, url, auth in targets[shift:] + targets[:shift]:
                rates[label].append(asyncio.run(rate(url, auth, args.requests, args.clients)))
            print(
                f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True
            )
        check_us, throttle_us = asyncio.run(per_call_costs(backend, secret))
    med = {label: median(values) for label, values in rates.items()}
    rows = [
        ("bearer token: user check", med["bearer token, check on"], med["bearer token, check off"]),
        ("Basic, credential cached: throttle", med["Basic, cached, throttle on"], med["Basic, cached, throttle off"]),
        ("Basic, no cache (every request asks CouchDB): throttle", med["Basic, no cache, throttle on"],
         med["Basic, no cache, throttle off"]),
    ]  # fmt: skip
    body = (
        f"Command: `.venv/bin/python -m bench.auth_hot_path --requests {args.requests} --clients {args.clients} "
        f"--rounds {args.rounds}`\n"
        "(one run; medians over the rounds of requests/s of an authenticated `GET /{db}/{id}` of a\n"
        "small doc through couchgate to an in-memory pouchdb-server, audit log off; one couchgate\n"
        "process per variant, all up at once, measured in turn in a rotated order each round; the\n"
        'load generator in the same run on this 2-core machine. "Without" for the token check is\n'
        "`TokenGuard.check` replaced by nothing, for the throttle `COUCHGATE_LOGIN_THROTTLE=false`.\n"
        "The token's user is read from CouchDB at most every `COUCHGATE_AUTH_CACHE_SECONDS` (30 s),\n"
        "so on the hot path the check is dictionary lookups; a cached Basic credential never\n"
        "consults the throttle, so the 'Basic, credential cached' pair runs the same code: the\n"
        "spread between its two columns is this machine's noise during the run.)\n\n"
        "| what | with it | without it | with / without |\n|---|---|---|---|\n"
        + "".join(f"| {what} | {on:,.0f} | {off:,.0f} | {on / off:.2f}x |\n" for what, on, off in rows)
        + "\nPer call, warm, in CPU time (the same run, in process, 50,000 calls each): the token\n"
        f"check {check_us:.1f} µs; the throttle's question before a Basic credential is sent to\n"
        f"CouchDB {throttle_us:.1f} µs (a request through couchgate costs milliseconds).\n"
    )
    write_section(SECTION, body)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-unchecked"]:
        serve_without_token_check()
    main()
