"""couchgate's own `since` tokens for offline users' `_changes` feeds.

A token is opaque to clients: base64url of a small JSON object, signed with HMAC-SHA256 so
a forged or edited token is simply unknown. It carries:

- `u`: the user it was issued to;
- `e`: the epoch of the index that numbered it (a process-local index numbers changes
  with its own ordinals; another replica or a restarted process has another epoch);
- `o`: the last ordinal the client has been sent (incremental mode);
- `f`: a fingerprint of everything besides the contact tree that decides the user's
  scope (facilities, roles, depths, contact, relevant settings);
- `b`: during a backfill, the last doc id sent (a backfill walks the readable set in doc
  id order, which every replica agrees on), and `o` is then the ordinal the backfill
  started from in epoch `e`.

Reading one back never fails: a token that is unknown, forged, for another user, or from
another epoch yields a `Since` that restarts safely (a backfill), never a gap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class Since:
    epoch: str
    ordinal: int
    fingerprint: str
    backfill_after: str | None = None  # None: incremental; "" or an id: backfilling

    @property
    def backfilling(self) -> bool:
        return self.backfill_after is not None


START = Since(epoch="", ordinal=0, fingerprint="", backfill_after="")


class SinceCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()[:16]).decode()

    def encode(self, user: str, since: Since) -> str:
        body: dict[str, object] = {"u": user, "e": since.epoch, "o": since.ordinal, "f": since.fingerprint}
        if since.backfill_after is not None:
            body["b"] = since.backfill_after
        payload = orjson.dumps(body)
        token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{token}.{self._sign(payload).rstrip('=')}"

    def decode(self, user: str, token: object) -> Since | None:
        """The token's content, or None when it is not a valid token of this user."""
        if not isinstance(token, str) or "." not in token or len(token) > 4096:
            return None
        body_part, _, sig = token.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body_part + "=" * (-len(body_part) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload).rstrip("="), sig):
            return None
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict) or body.get("u") != user:
            return None
        epoch, ordinal, fingerprint = body.get("e"), body.get("o"), body.get("f")
        after = body.get("b")
        if not isinstance(epoch, str) or not isinstance(ordinal, int) or not isinstance(fingerprint, str):
            return None
        if after is not None and not isinstance(after, str):
            return None
        return Since(epoch=epoch, ordinal=max(ordinal, 0), fingerprint=fingerprint, backfill_after=after)


def fingerprint(*parts: object) -> str:
    """A short stable hash of the scope inputs that are not the contact tree."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
