"""The scope index saved on the replica's own disk, so a restart resumes instead of
rebuilding, and keeps its epoch: since tokens handed out before the restart stay exact,
and so does what left users' scopes (`proxy.access.history` is saved with the index).

A snapshot is one file, `<state dir>/index-<hash of the database>.snap`:

    MAGIC | length of the identity (4 bytes) | identity | HMAC-SHA256 | pickled state

The identity names the format, couchgate's version, the database and the database's
instance (a random id couchgate keeps in the `_local` doc `_local/couchgate-instance`, so
a database deleted and created again under the same name is another database). The HMAC
(keyed by the since secret) covers identity and state: a snapshot that another
installation wrote, that was edited or truncated, or that belongs to another database or
version is refused before anything in it is read, and the index is built from CouchDB
instead. Nothing is trusted that the key did not vouch for: the state is unpickled only
after the HMAC matched. The app settings saved in it must also be those CouchDB holds
when it is taken up (`IndexSync._restore`): a snapshot saved under other access rules is
refused too.

Saved after the first build, then every `COUCHGATE_SNAPSHOT_INTERVAL_SECONDS` while the
index changes, and at shutdown; written to a temporary file, synced and renamed, so a
crash leaves the previous snapshot whole. The index pickles as its columns (raw arrays,
proxy/access/columns.py), so saving and loading cost about a second per million docs
(`bench.index_scale` in `docs/benchmarks.md`); periodic saves run in a forked copy of
the process (the loop does not stop), the one at shutdown on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import pickle
import struct
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from proxy.couch.client import CouchClient
from proxy.errors import UpstreamError

log = logging.getLogger(__name__)

MAGIC = b"couchgate index snapshot\n"
FORMAT = 3  # 2: a Version carries its last revision; 3: the index in columns (raw arrays)
INSTANCE_DOC = "_local/couchgate-instance"


def version() -> str:
    try:
        return metadata.version("couchgate")
    except metadata.PackageNotFoundError:
        return "unknown"


async def database_instance(couch: CouchClient, db_path: str) -> str:
    """The database's instance id (created on first use). Raises UpstreamError when it
    cannot be read or written: without it no snapshot can be vouched for."""
    path = f"{db_path}/{INSTANCE_DOC}"
    for _ in range(3):
        result = await couch.json("GET", path)
        if result.ok and isinstance(result.body, dict) and isinstance(result.body.get("instance"), str):
            return str(result.body["instance"])
        if result.status != 404:
            raise UpstreamError(f"CouchDB answered {result.status} to the database instance read")
        created = await couch.json("PUT", path, body={"instance": uuid.uuid4().hex})
        if not created.ok and created.status != 409:  # 409: another replica made it first
            raise UpstreamError(f"CouchDB answered {created.status} to the database instance write")
    raise UpstreamError("the database instance id could not be settled")


@dataclass
class Snapshots:
    directory: Path
    db: str
    key: bytes

    @property
    def path(self) -> Path:
        return self.directory / f"index-{hashlib.sha256(self.db.encode()).hexdigest()[:16]}.snap"

    def identity(self, instance: str) -> bytes:
        return f"format={FORMAT}\nversion={version()}\ndb={self.db}\ninstance={instance}\n".encode()

    def _signer(self, identity: bytes) -> hmac.HMAC:
        mac = hmac.new(hashlib.sha256(b"couchgate index snapshots\0" + self.key).digest(), digestmod="sha256")
        mac.update(identity)
        return mac

    def _mac(self, identity: bytes, payload: bytes | memoryview) -> bytes:
        mac = self._signer(identity)
        mac.update(payload)
        return mac.digest()

    def save(self, instance: str, state: dict[str, Any]) -> int:
        """Write the state for this database instance; the bytes written. The state is
        pickled straight into the file (signed as it goes, the signature written last in
        its place): never whole in memory, which at 10 million docs would be ~1.3 GB."""
        identity = self.identity(instance)
        head = MAGIC + struct.pack(">I", len(identity)) + identity
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            out.write(head + bytes(32))
            signed = _Signed(out, self._signer(identity))
            pickle.dump(state, signed, protocol=pickle.HIGHEST_PROTOCOL)
            size = out.tell()
            out.seek(len(head))
            out.write(signed.mac.digest())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return size

    def load(self, instance: str) -> dict[str, Any] | None:
        """The state saved for this database instance, or None (absent, or refused: logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("index snapshot unreadable (%s): building from CouchDB", exc)
            return None
        why = self._check(raw, instance)
        if why is not None:
            log.warning("index snapshot refused (%s): building from CouchDB", why)
            return None
        identity_len = struct.unpack_from(">I", raw, len(MAGIC))[0]
        start = len(MAGIC) + 4 + identity_len + 32
        try:
            state = pickle.loads(memoryview(raw)[start:])  # noqa: S301 (vouched for by the HMAC above)
        except Exception as exc:  # vouched for by the key, yet unreadable: another layout
            log.warning("index snapshot unreadable (%s): building from CouchDB", type(exc).__name__)
            return None
        return state if isinstance(state, dict) else None

    def _check(self, raw: bytes, instance: str) -> str | None:
        if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
            return "not a snapshot"
        identity_len = struct.unpack_from(">I", raw, len(MAGIC))[0]
        at = len(MAGIC) + 4
        identity, mac = raw[at : at + identity_len], raw[at + identity_len : at + identity_len + 32]
        if len(mac) != 32:
            return "truncated"
        if identity != self.identity(instance):
            return "another database, instance, format or version"
        if not hmac.compare_digest(mac, self._mac(identity, memoryview(raw)[at + identity_len + 32 :])):
            return "its content does not match its signature"
        return None


class _Signed:
    """A file that signs what is written to it."""

    def __init__(self, out: BinaryIO, mac: hmac.HMAC) -> None:
        self.out, self.mac = out, mac

    def write(self, data: bytes | memoryview) -> int:
        self.mac.update(data)
        return self.out.write(data)


async def save_forked(snapshots: Snapshots, instance: str, state: dict[str, Any]) -> bool:
    """Save from a forked child (copy-on-write: the state as it stands now), so the event
    loop never stops for the pickling; True once the child wrote the file. Where fork is
    not available, saves here."""
    if not hasattr(os, "fork"):
        snapshots.save(instance, state)
        return True
    pid = os.fork()
    if pid == 0:  # the child: pickle, write, leave at once (no loop, no logging, no cleanup)
        code = 1
        try:
            # Let go of every inherited descriptor first: a client connection the parent
            # closes meanwhile must not stay open here until the save is done.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            snapshots.save(instance, state)
            code = 0
        finally:
            os._exit(code)
    _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
