"""Offline users' sync activity as this replica saw it: when each last synced, and the
errors and refusals among their requests over a recent window.

Kept in memory, per process (per replica), from process start: not shared between
replicas and not kept across restarts. Replicas run with session affinity (k8s/service.yaml),
so a phone's syncs land on one replica and its record there is whole; after a restart or
a move to another replica a user shows `last_sync: null` there until they sync again.
Writing this to CouchDB would cost a write per sync request; the numbers are an operator's
pointer to look closer (the audit log keeps every refusal durably, across replicas).

Memory: one small record per offline user who synced, each keeping at most `MAX_EVENTS`
recent error and refusal events (a burst beyond that counts as `MAX_EVENTS`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

MAX_EVENTS = 1000


@dataclass
class UserActivity:
    last_sync: float = 0.0
    last_error: float | None = None
    last_error_route: str | None = None
    errors: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    refusals: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))


@dataclass(frozen=True)
class Summary:
    last_sync: float | None
    errors: int
    refusals: int
    last_error: float | None
    last_error_route: str | None


NEVER = Summary(None, 0, 0, None, None)


class Activity:
    def __init__(self, window: float, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self.since = clock()
        self.users: dict[str, UserActivity] = {}

    def saw(self, user: str, route: str, *, error: bool, refused: int) -> None:
        """One request of an offline user, answered: an error if it failed, and how many
        docs (or the request itself) the rules refused."""
        now = self.clock()
        record = self.users.get(user)
        if record is None:
            record = self.users[user] = UserActivity()
        record.last_sync = now
        if error:
            record.errors.append(now)
            record.last_error, record.last_error_route = now, route
        if refused:
            record.refusals.append((now, refused))

    def summary(self, user: str) -> Summary:
        record = self.users.get(user)
        if record is None:
            return NEVER
        start = self.clock() - self.window
        return Summary(
            last_sync=record.last_sync,
            errors=sum(1 for at in record.errors if at >= start),
            refusals=sum(n for at, n in record.refusals if at >= start),
            last_error=record.last_error,
            last_error_route=record.last_error_route,
        )


ACTIVITY = web.AppKey("activity", Activity)
