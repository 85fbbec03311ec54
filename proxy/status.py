"""Liveness and readiness probes.

Readiness reflects the present and answers within `READY_WITHIN` seconds: 503 when CouchDB
does not answer in that time, when the scope index is not level with CouchDB (not built yet,
or failing since CouchDB stopped answering), or when the audit log cannot be written now (an
audit database that failed earlier is asked again, not judged by its last failure).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy import __version__
from proxy.audit.log import AuditLog
from proxy.errors import UpstreamError, json_response
from proxy.keys import AUDIT, COUCH, INDEX, SETTINGS

READY_WITHIN = 1.0


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok", "version": __version__})


def not_ready(reason: str, checks: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": "service_unavailable", "reason": reason}
    if checks is not None:
        body["checks"] = checks
    return json_response(body, status=503, headers={"Retry-After": "1"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: CouchDB answers the service account, the main database exists, the index
    is level with it and the audit log can be written."""
    try:
        async with asyncio.timeout(READY_WITHIN):
            return await _ready(request)
    except TimeoutError:
        return not_ready(f"CouchDB did not answer within {READY_WITHIN:g} s")


async def _ready(request: web.Request) -> web.Response:
    db = request.app[SETTINGS].db
    try:
        result = await request.app[COUCH].json("GET", f"/{quote(db, safe='')}")
    except UpstreamError as exc:
        return not_ready(exc.reason)
    if result.status == 404:
        return not_ready(f"database {db} does not exist")
    if not result.ok:
        return not_ready(f"CouchDB answered {result.status} for {db}")
    checks: dict[str, Any] = {"upstream": "ok", "db": "ok"}
    sync = request.app[INDEX]
    if sync.failing is not None or not sync.built.is_set():
        checks["index"] = sync.failing or "building"
        return not_ready("the offline users' index is not level with CouchDB yet", checks)
    checks["index"] = "ok"
    sink = request.app[AUDIT]
    if isinstance(sink, AuditLog):
        await sink.retry_now()  # bounded by READY_WITHIN, like the rest
        audit = sink.health()
        checks["audit"] = audit
        if audit["error"] is not None:
            # Writes would go unrecorded for now (they queue): not ready, and say why.
            reason = f"audit log cannot be written: {audit['queued']} entries queued ({audit['error']})"
            return not_ready(reason, checks)
    return json_response({"status": "ready", "db": db, "checks": checks})
