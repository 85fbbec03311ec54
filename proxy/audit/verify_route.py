"""`GET /_couchgate/audit/verify` (admins): `couchgate audit verify` over HTTP, for the console.

Streams every writer's chain through the `chain` view, entry by entry, so it costs a read of
the whole audit log (time, not memory). `checkpoint=WRITER:SEQ:HASH` (repeatable) adds
logged checkpoints, against which deleting a writer's newest entries shows."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.audit.cli import parse_checkpoint, verify_log
from proxy.audit.log import INTENTS_SUFFIX, iso
from proxy.audit.routes import audit_log
from proxy.errors import BadRequest, Forbidden, json_response
from proxy.keys import CALLER, COUCH

MAX_BREAKS = 1000  # listed in the answer; all are counted


async def verify(request: web.Request) -> web.Response:
    """Check the hash chain of every writer: intact, or each break (edited, missing,
    relinked, truncated)."""
    if not request[CALLER].is_admin:
        raise Forbidden("You are not a server admin.")
    try:
        checkpoints = [parse_checkpoint(c) for c in request.query.getall("checkpoint", [])]
    except ValueError as exc:
        raise BadRequest("checkpoint must be WRITER:SEQ:HASH") from exc
    log = audit_log(request)
    await log.flush()  # what was recorded before this request is checked too
    checker = await verify_log(request.app[COUCH], log.db, checkpoints)
    breaks = checker.breaks
    return json_response(
        {
            "intact": not breaks,
            "entries": checker.entries - checker.intents,
            "intents": checker.intents,
            "writers": len({w.removesuffix(INTENTS_SUFFIX) for w in checker.writers}),
            "breaks_total": len(breaks),
            "breaks": [{"writer": b.writer, "seq": b.seq, "problem": b.problem} for b in breaks[:MAX_BREAKS]],
            "checked_at": iso(int(time.time() * 1000)),
        }
    )
