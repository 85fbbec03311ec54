"""`couchgate dev` keeps its backend alive: when pouchdb-server dies, it is restarted.

While it is down, a stand-in answers on couchgate's port: `/_couchgate/ready` (and every
CouchDB path) 503 with `Retry-After`, `/_couchgate/health` 200. Once the backend answers
again its data is back (an in-memory backend is seeded with the demo data again; an
on-disk one keeps its data and gets its demo server admins back, which live in its config
file), and a fresh couchgate takes the port over: its scope index is rebuilt from the
backend as it is now, so nothing it knew of the lost data lingers. The listening socket
is never closed meanwhile; each change is a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.app import create_app
from proxy.devserver.backend import BackendError, PouchServer
from proxy.errors import error_response, json_response
from proxy.keys import SETTINGS
from proxy.server import listen, start, stop_signal
from proxy.settings import Settings

log = logging.getLogger("couchgate.dev")
POLL = 0.2  # how often the backend process is looked at
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)

Reload = Callable[[], Awaitable[None]]


def standby_app(settings: Settings) -> web.Application:
    """What answers on couchgate's port while the backend restarts."""

    async def health(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "backend": "restarting"})

    async def unavailable(request: web.Request) -> web.Response:
        reason = "the embedded backend is restarting"
        return error_response(503, "service_unavailable", reason, {"Retry-After": "1"})

    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/_couchgate/health", health)
    app.router.add_route("*", "/{path:.*}", unavailable)
    return app


async def backend_exit(backend: PouchServer) -> int:
    # Polled: a thread blocked in wait() would hold up the event loop's shutdown.
    while (code := backend.exit_code()) is None:  # noqa: ASYNC110
        await asyncio.sleep(POLL)
    return code


async def restart(backend: PouchServer, reload: Reload, stop: asyncio.Event) -> bool:
    """Start the backend again and put its data back; retried until it works or `stop`."""
    for attempt in itertools.count():
        if stop.is_set():
            return False
        try:
            await asyncio.to_thread(backend.restart)
            await reload()
            return True
        except (BackendError, OSError, RuntimeError) as exc:
            delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
            log.error("could not restart the backend (%s); trying again in %.1f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    raise AssertionError("unreachable")


async def serve_dev(
    settings: Settings, backend: PouchServer, reload: Reload, shutdown_timeout: float
) -> None:
    """couchgate on `settings.port` until SIGINT or SIGTERM, restarting the backend when it dies."""
    stop = await stop_signal()
    with contextlib.closing(listen(settings)) as sock:
        gate: web.AppRunner | None = await start(create_app(settings), sock, shutdown_timeout)
        try:
            while gate is not None:
                stopping = asyncio.create_task(stop.wait())
                exited = asyncio.create_task(backend_exit(backend))
                await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
                for task in (stopping, exited):
                    task.cancel()
                if stop.is_set():
                    return
                log.warning(
                    "the backend (pid %s) exited with %s: restarting it; couchgate answers 503 until it "
                    "is back", backend.pid, exited.result(),
                )  # fmt: skip
                standby = await start(standby_app(settings), sock, 1)
                await gate.cleanup()
                gate = None
                if await restart(backend, reload, stop):
                    gate = await start(create_app(settings), sock, shutdown_timeout)
                    log.warning("the backend is back on %s (pid %s)", backend.url, backend.pid)
                await standby.cleanup()
        finally:
            if gate is not None:
                await gate.cleanup()
