"""`GET /_couchgate/users/{name}/scope` (admins): what a user would replicate."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.access.config import UserCtx, is_offline
from proxy.errors import Forbidden, NotFound, json_response
from proxy.keys import CALLER, INDEX, REMOVALS, SETTINGS, USERS

RECENT_DAYS = 7  # what `left_recently` counts


async def user_scope(request: web.Request) -> web.Response:
    """How many docs the user would replicate, by kind, with a warning above the limit."""
    if not request[CALLER].is_admin:
        raise Forbidden("You are not a server admin.")
    name = request.match_info["name"]
    info = await request.app[USERS].get(name)
    if not info.exists:
        raise NotFound(f"no user named {name}")
    sync = request.app[INDEX]
    await sync.sync()
    user = UserCtx(
        name=name,
        roles=info.roles,
        facility_ids=info.facility_ids,
        contact_id=info.contact_id,
        is_admin=False,
    )
    by_kind = sync.index.count_by_kind(user, sync.settings)
    total = sum(by_kind.values())
    limit = request.app[SETTINGS].scope_warn_docs
    removals = request.app[REMOVALS]
    left = (
        (await removals.ledger(name)).recent(time.time() - RECENT_DAYS * 86400) if removals.enabled else None
    )
    return json_response(
        {
            "user": name,
            "offline": is_offline(user, sync.settings),
            "facility_ids": list(info.facility_ids),
            "contact_id": info.contact_id,
            "total": total,
            "by_kind": by_kind,
            "warn_limit": limit,
            "warning": total > limit,
            "left_recently": left,
            "left_recently_days": RECENT_DAYS,
        }
    )
