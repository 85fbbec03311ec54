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
- `b`: during a backfill, the last doc id sent (a backfill walks the readable set in doc
  id order, which every replica agrees on), and `o` is then the ordinal the backfill
  started from in epoch `e`.

Reading one back never fails: a token that is unknown, forged, for another user, or from
another epoch yields a `Since` that restarts safely (a backfill), never a gap.
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
    backfill_after: str | None = None  # None: incremental; "" or an id: backfilling

    @property
    def backfilling(self) -> bool:
        return self.backfill_after is not None


START = Since(epoch="", ordinal=0, fingerprint="", backfill_after="")


NONCE = 12


class SinceCodec:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"couchgate since tokens\0" + key).digest())

    def encode(self, user: str, since: Since) -> str:
        body: dict[str, object] = {"u": user, "e": since.epoch, "o": since.ordinal, "f": since.fingerprint}
        if since.backfill_after is not None:
            body["b"] = since.backfill_after
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
        after = body.get("b")
        if not isinstance(epoch, str) or not isinstance(ordinal, int) or not isinstance(fingerprint, str):
            return None
        if after is not None and not isinstance(after, str):
            return None
        return Since(epoch=epoch, ordinal=max(ordinal, 0), fingerprint=fingerprint, backfill_after=after)


def fingerprint(*parts: object) -> str:
    """A short stable hash of the scope inputs that are not the contact tree."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
