"""Run an application until SIGINT or SIGTERM, with couchgate's logging and edge rules."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

from aiohttp import web

from proxy.app import create_app
from proxy.edge import EdgeRunner
from proxy.logs import AccessLogger, configure_logging
from proxy.settings import Settings

# As aiohttp's run_app: how long an idle client connection is kept open between requests.
KEEPALIVE_TIMEOUT = 75.0


def run_server(settings: Settings, shutdown_timeout: float = 10) -> None:
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(create_app(settings), settings, shutdown_timeout))


async def start(app: web.Application, sock: socket.socket, shutdown_timeout: float) -> EdgeRunner:
    """Serve `app` on a listening socket (a duplicate of it: several runners may take turns)."""
    runner = EdgeRunner(
        app,
        access_log_class=AccessLogger,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    await web.SockSite(runner, sock.dup()).start()
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
    stop = await stop_signal()
    with contextlib.closing(listen(settings)) as sock:
        runner = await start(app, sock, shutdown_timeout)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
