"""Run an application until SIGINT or SIGTERM, with couchgate's logging."""

from __future__ import annotations

from aiohttp import web

from proxy.app import create_app
from proxy.logs import AccessLogger, configure_logging
from proxy.settings import Settings


def run_server(settings: Settings, shutdown_timeout: float = 10) -> None:
    configure_logging(settings.log_level, settings.log_json)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=shutdown_timeout,
    )
