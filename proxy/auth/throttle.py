"""Failed logins slow down whoever keeps failing, per user name and per client address.

Every way of presenting a password counts: HTTP Basic, `POST /_session` and
`POST /_couchgate/token`. Each name and each address has some free failures; past them,
each failure blocks further attempts for a delay that doubles from the base up to the
max. While blocked, attempts are answered 429 with `Retry-After`, without asking CouchDB
and without counting (so a blocked guesser cannot push the delay further out). A record
is forgotten after a quiet spell, and a success clears its name: there is no permanent
lockout, and the right password works as soon as the delay has passed.

A stranger guessing at a CHW's name blocks that name too; so that the CHW's phone keeps
syncing meanwhile, a password that this process has seen succeed for that name recently
is not a guess: it is still checked by CouchDB (a changed password fails, and counts),
but the block does not apply to it. Only keyed hashes of such passwords are kept.

Attempts in flight count as failures until CouchDB has answered them (`admit`
takes a slot, `failed`, `succeeded` or `release` gives it back): a burst of parallel
guesses gets the free failures, not one per request that arrived before the first answer.

State is per process: with N replicas an attacker gets up to N times the attempts (less
with session affinity). Memory is bounded: past `max_keys` records the stalest go.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.errors import TooManyRequests

KNOWN_GOOD_SECONDS = 24 * 3600


class LoginThrottled(TooManyRequests):
    def __init__(self, name: str | None, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins: try again in {max(1, round(retry_after))} s", retry_after=retry_after
        )
        self.name = name


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0
    pending: list[float] = field(default_factory=list)  # attempts in flight (since when)


IN_FLIGHT_SECONDS = 60.0  # an attempt never answered stops counting after this


@dataclass(frozen=True)
class ThrottleLimits:
    enabled: bool = True
    free_per_name: int = 5
    free_per_address: int = 20
    base_delay: float = 1.0
    max_delay: float = 300.0
    forget_after: float = 900.0


class LoginThrottle:
    def __init__(
        self, limits: ThrottleLimits, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.max_keys = max_keys
        self._records: dict[tuple[str, str], _Record] = {}
        self._known: dict[bytes, float] = {}
        self._key = secrets.token_bytes(32)

    def _keys(self, name: str | None, address: str | None) -> list[tuple[tuple[str, str], int]]:
        keys = []
        if name:
            keys.append((("name", name), self.limits.free_per_name))
        if address:
            keys.append((("address", address), self.limits.free_per_address))
        return keys

    def _live(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        record.pending = [t for t in record.pending if now - t < IN_FLIGHT_SECONDS]
        stale = now - record.last_failure > self.limits.forget_after
        if now >= record.blocked_until and stale and not record.pending:
            del self._records[key]
            return None
        return record

    def _fingerprint(self, name: str, secret: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{secret}".encode(), hashlib.sha256).digest()

    def _is_known(self, name: str, secret: str, now: float) -> bool:
        expires = self._known.get(self._fingerprint(name, secret))
        return expires is not None and expires > now

    def admit(self, name: str | None, address: str | None, secret: str | None = None) -> float | None:
        """As `retry_after`; when the login may be tried now (None), the attempt takes a slot
        until `failed`, `succeeded` or `release` says how it ended."""
        wait = self.retry_after(name, address, secret)
        if wait is None and self.limits.enabled:
            now = self.clock()
            for key, _ in self._keys(name, address):
                (self._live(key, now) or self._records.setdefault(key, _Record())).pending.append(now)
        return wait

    def retry_after(self, name: str | None, address: str | None, secret: str | None = None) -> float | None:
        """Seconds until a login as `name` from `address` may be tried, or None if it may be
        now (attempts in flight count as failures). `secret`: the password offered, exempt
        from the block if it succeeded lately."""
        if not self.limits.enabled:
            return None
        now = self.clock()
        if name and secret is not None and self._is_known(name, secret, now):
            return None  # a password that worked lately passes the block
        wait = 0.0
        for key, free in self._keys(name, address):
            record = self._live(key, now)
            if record is not None:
                wait = max(wait, record.blocked_until - now)
                if record.pending and record.failures + len(record.pending) >= free:
                    # As many attempts in flight as failures left: wait for their answers.
                    wait = max(wait, self.limits.base_delay)
        return wait if wait > 0 else None

    def release(self, name: str | None, address: str | None) -> None:
        """An attempt that took a slot ended without an answer on the password."""
        for key, _ in self._keys(name, address):
            record = self._records.get(key)
            if record is not None and record.pending:
                record.pending.pop(0)

    def failed(self, name: str | None, address: str | None, secret: str | None = None) -> None:
        if not self.limits.enabled:
            return
        self.release(name, address)
        now = self.clock()
        if name and secret is not None:
            self._known.pop(self._fingerprint(name, secret), None)  # no longer the password
        for key, free in self._keys(name, address):
            record = self._live(key, now) or self._records.setdefault(key, _Record())
            record.failures += 1
            record.last_failure = now
            over = record.failures - free
            if over > 0:
                delay = min(self.limits.max_delay, self.limits.base_delay * 2 ** min(over - 1, 62))
                record.blocked_until = max(record.blocked_until, now + delay)
        if len(self._records) > self.max_keys:
            self._prune(now)

    def succeeded(self, name: str | None, secret: str | None = None, address: str | None = None) -> None:
        if not self.limits.enabled:
            return
        self.release(name, address)
        if not name:
            return
        self._records.pop(("name", name), None)
        if secret is not None:
            now = self.clock()
            if len(self._known) >= self.max_keys:
                self._known = {k: v for k, v in self._known.items() if v > now}
                if len(self._known) >= self.max_keys:
                    self._known.clear()
            self._known[self._fingerprint(name, secret)] = now + KNOWN_GOOD_SECONDS

    def _prune(self, now: float) -> None:
        for key in list(self._records):
            self._live(key, now)
        if len(self._records) > self.max_keys:
            stalest = sorted(self._records, key=lambda k: self._records[k].last_failure)
            for key in stalest[: len(stalest) // 2]:
                del self._records[key]
