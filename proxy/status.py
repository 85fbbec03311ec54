"""Liveness and readiness probes."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from proxy import __version__
from proxy.audit.log import AuditLog
from proxy.errors import UpstreamError, error_response, json_response
from proxy.keys import AUDIT, COUCH, INDEX, SETTINGS


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    """Readiness: CouchDB answers the service account, the main database exists, and the scope
    index has been built once (before that, an offline user's first request would wait for
    the whole build: a first sync after a start several times slower than the next)."""
    db = request.app[SETTINGS].db
    try:
        result = await request.app[COUCH].json("GET", f"/{quote(db, safe='')}")
    except UpstreamError as exc:
        return error_response(503, "service_unavailable", exc.reason)
    if result.status == 404:
        return error_response(503, "service_unavailable", f"database {db} does not exist")
    if not result.ok:
        return error_response(503, "service_unavailable", f"CouchDB answered {result.status} for {db}")
    checks: dict[str, object] = {"upstream": "ok", "db": "ok"}
    if not request.app[INDEX].built.is_set():
        return error_response(503, "service_unavailable", "the scope index is still being built")
    checks["index"] = "ok"
    sink = request.app[AUDIT]
    if isinstance(sink, AuditLog):
        audit = sink.health()
        checks["audit"] = audit
        if audit["error"] is not None:
            # Writes would go unrecorded for now (they queue): not ready, and say why.
            reason = f"audit log cannot be written: {audit['queued']} entries queued ({audit['error']})"
            return json_response(
                {"error": "service_unavailable", "reason": reason, "checks": checks}, status=503
            )
    return json_response({"status": "ready", "db": db, "checks": checks})
