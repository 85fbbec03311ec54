"""Fixtures of the audit log tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.devserver.backend import PouchServer

from support import Gateway, audited_gateway


@pytest.fixture
async def agw(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    """couchgate with the audit log on, writing to an audit database of its own."""
    async with audited_gateway(backend, db) as gw:
        yield gw
