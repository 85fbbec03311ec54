"""Run an application until SIGINT or SIGTERM, with couchgate's logging, its open-file limit
raised and its client connections capped below it (proxy/connections.py)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from proxy.app import create_app
from proxy.connections import CappedSite, connection_cap, quiet_accept_errors, raise_open_files_limit
from proxy.logs import AccessLogger, configure_logging
from proxy.settings import Settings

log = logging.getLogger("couchgate.server")


def run_server(settings: Settings, shutdown_timeout: float = 10) -> None:
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(settings, shutdown_timeout))


async def serve(settings: Settings, shutdown_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    open_files = raise_open_files_limit()
    cap = connection_cap(settings, open_files)
    runner = web.AppRunner(
        create_app(settings),
        access_log_class=AccessLogger,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await CappedSite(runner, settings.host, settings.port, cap).start()
        log.info("couchgate listening on %s:%d (open files %d, connections at most %d)",
                 settings.host, settings.port, open_files, cap)  # fmt: skip
        await stop.wait()
    finally:
        await runner.cleanup()
