"""couchgate's own `since` tokens for offline users' `_changes` feeds.

A token is opaque to clients: a small JSON object sealed with AES-GCM (a key derived from
the since secret), so a forged or edited token is simply unknown, and what it carries
(the index's ordinal counts every change in the database) tells the client nothing about
other users' writes. It carries:

- `u`: the user it was issued to;
- `e`: the epoch of the index that numbered it (a process-local index numbers changes
  with its own ordinals; another replica or a restarted process has another epoch);
- `o`: the last ordinal the client has been sent (incremental mode);
- `f`: a fingerprint of everything besides the contact tree that decides the user's
  scope (facilities, roles, depths, contact, relevant settings);
- `fa`, `ro`, `co`: the user's facilities, roles and contact when the token was made (the
  device holds what that user could read then: `proxy.access.history`);
- `lt`, `it`: wall-clock times (ms) between which CouchDB's state lies that the device
  holds: it holds everything CouchDB held at `lt` and nothing CouchDB did not hold at `it`.
  Another replica, or this one after a restart without its snapshot, places the token
  between two of its own ordinals by them (`proxy.offline.changes.Feed`).
- `rc`: in a page that `limit` cut short while sending removals (or a removal row's seq),
  the last removal sent ((ordinal, doc id, the epoch of the index that numbered the
  ordinal)); the next request judges the same position again and goes on after it, if its
  index numbered that ordinal (else it sends them all again).
- `fr`: the device started from nothing and is still catching up (no made-up revisions).
- `rp`: the ordinal as of which the device was sent what left, when its changes are sent
  only up to `o` (a `limit`ed page after removals).

Reading one back never fails: a token that is unknown, forged, or for another user yields
None, and the feed restarts safely (a backfill), never with a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


@dataclass(frozen=True)
class Since:
    epoch: str
    ordinal: int
    fingerprint: str
    # Who the user was when the device got here (what their scope was then).
    facilities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    contact: str | None = None
    # The device holds CouchDB's state as of some time between these (wall clock, ms).
    level: int = 0
    issued: int = 0
    # Removals of this position already sent, up to this (ordinal, doc id) (a `limit`ed page).
    removed_to: tuple[int, str] | None = None
    # The device was sent the removals as of this later ordinal (its changes only up to
    # `ordinal`: a `limit`ed page); what left is judged from here next.
    removals_at: int | None = None
    # The device started from nothing and has not caught up yet: it holds no revision
    # couchgate made up (its pages need not read the user's ledger).
    fresh: bool = False
    removed_by: str | None = None  # the epoch that numbered `removed_to`'s ordinal


NONCE = 12


class SinceCodec:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"couchgate since tokens\0" + key).digest())

    def encode(self, user: str, since: Since) -> str:
        body: dict[str, object] = {
            "u": user, "e": since.epoch, "o": since.ordinal, "f": since.fingerprint,
            "fa": since.facilities, "ro": since.roles, "co": since.contact,
            "lt": since.level, "it": since.issued,
        }  # fmt: skip
        if since.removed_to is not None:
            body["rc"] = [*since.removed_to, since.removed_by]
        if since.removals_at is not None:
            body["rp"] = since.removals_at
        if since.fresh:
            body["fr"] = 1
        nonce = os.urandom(NONCE)
        sealed = self._aead.encrypt(nonce, orjson.dumps(body), user.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decode(self, user: str, token: object) -> Since | None:
        """The token's content, or None when it is not a valid token of this user."""
        if not isinstance(token, str) or len(token) > 4096:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = self._aead.decrypt(raw[:NONCE], raw[NONCE:], user.encode())
            body = orjson.loads(payload)
        except (ValueError, binascii.Error, InvalidTag, orjson.JSONDecodeError):
            return None
        if not isinstance(body, dict) or body.get("u") != user:
            return None
        epoch, ordinal, fingerprint = body.get("e"), body.get("o"), body.get("f")
        if not isinstance(epoch, str) or not isinstance(ordinal, int) or not isinstance(fingerprint, str):
            return None
        facilities, roles, contact = body.get("fa", []), body.get("ro", []), body.get("co")
        level, issued, cursor, removals_at = (
            body.get("lt", 0),
            body.get("it", 0),
            body.get("rc"),
            body.get("rp"),
        )
        if (
            not isinstance(facilities, list) or not all(isinstance(f, str) for f in facilities)
            or not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
            or not (contact is None or isinstance(contact, str))
            or not isinstance(level, int) or not isinstance(issued, int)
            or not (cursor is None or (isinstance(cursor, list) and len(cursor) in (2, 3)
                                       and isinstance(cursor[0], int) and isinstance(cursor[1], str)
                                       and (len(cursor) == 2 or isinstance(cursor[2], str | None))))
            or not (removals_at is None or isinstance(removals_at, int))
        ):  # fmt: skip
            return None
        removed_to = (cursor[0], cursor[1]) if cursor is not None else None
        removed_by = cursor[2] if cursor is not None and len(cursor) == 3 else None  # older: not known
        return Since(
            epoch, max(ordinal, 0), fingerprint, tuple(facilities), tuple(roles), contact, level, issued,
            removed_to, removals_at, body.get("fr") == 1, removed_by,
        )  # fmt: skip


def fingerprint(*parts: object) -> str:
    """A short stable hash of the scope inputs that are not the contact tree."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
