"""Run an application until SIGINT or SIGTERM, with couchgate's logging and edge rules
(proxy/edge.py), its open-file limit raised and its client connections capped below it
(proxy/connections.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from aiohttp import web

from proxy.app import create_app
from proxy.connections import CappedSockSite, connection_cap, quiet_accept_errors, raise_open_files_limit
from proxy.edge import EdgeRunner
from proxy.logs import AccessLogger, configure_logging
from proxy.settings import Settings

# As aiohttp's run_app: how long an idle client connection is kept open between requests.
KEEPALIVE_TIMEOUT = 75.0
log = logging.getLogger("couchgate.server")


def run_server(settings: Settings, shutdown_timeout: float = 10) -> None:
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(create_app(settings), settings, shutdown_timeout))


async def start(
    app: web.Application, sock: socket.socket, shutdown_timeout: float, cap: int | None = None
) -> EdgeRunner:
    """Serve `app` on a listening socket (a duplicate of it: several runners may take turns);
    `cap`: at most this many client connections at once (more get 503 at once)."""
    runner = EdgeRunner(
        app,
        access_log_class=AccessLogger,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    site = web.SockSite(runner, sock.dup()) if cap is None else CappedSockSite(runner, sock.dup(), cap)
    await site.start()
    return runner


def listen(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    return socket.create_server((settings.host, settings.port), family=family, backlog=1024)


async def stop_signal() -> asyncio.Event:
    """Set on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(app: web.Application, settings: Settings, shutdown_timeout: float) -> None:
    quiet_accept_errors(asyncio.get_running_loop())
    open_files = raise_open_files_limit()
    cap = connection_cap(settings, open_files)
    stop = await stop_signal()
    with contextlib.closing(listen(settings)) as sock:
        runner = await start(app, sock, shutdown_timeout, cap)
        log.info("couchgate listening on %s:%d (open files %d, connections at most %d)",
                 settings.host, settings.port, open_files, cap)  # fmt: skip
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
