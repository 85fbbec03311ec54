"""Fixtures of the audit log tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from audit_support import audit_settings

from proxy.devserver.backend import PouchServer

from support import Gateway, start_gateway, stop_gateway


@pytest.fixture
async def agw(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    """couchgate with the audit log on, writing to an audit database of its own."""
    gw = await start_gateway(audit_settings(backend, db))
    yield gw
    await stop_gateway(gw)
    backend.request("DELETE", f"/{gw.settings.audit_db}")
