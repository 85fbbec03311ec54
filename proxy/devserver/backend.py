"""The backends tests, benchmarks and `couchgate dev` run against.

`PouchServer`: an embedded pouchdb-server (the default test backend), installed by `make`
into `node/node_modules` (git-ignored, pinned in `node/package-lock.json`). It rewrites its
config file with the admin password hashed, so the config is written fresh on every start.

`CouchServer`: an Apache CouchDB, either one already running (`CouchServer.at(url)`, the
admin's credentials in the URL) or one this process starts and stops with the project's
test script (`CouchServer.scripted(script, port)`, `../shared/couchdb/couchdb.sh`).

`backend_from(spec)` picks one from a command-line or environment value.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = PROJECT_ROOT / "node"


class BackendError(RuntimeError):
    """The embedded backend could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pouchdb_server_bin(node_dir: Path = NODE_DIR) -> Path:
    path = node_dir / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"
    if not path.exists():
        raise BackendError(f"pouchdb-server is not installed in {node_dir}; run `make install`")
    return path


class AdminClient:
    """What every backend offers its users: its URL, its server admin, small admin requests."""

    kind: ClassVar[str]
    admin_user: str
    admin_password: str

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def auth_header(self) -> str:
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        return f"Basic {token}"

    def _ready(self) -> bool:
        req = urllib.request.Request(self.url + "/_session", headers={"Authorization": self.auth_header})
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                body = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        roles = body.get("userCtx", {}).get("roles", [])
        return "_admin" in roles

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """A small synchronous admin request, for setup code and tests."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": self.auth_header,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@dataclass
class PouchServer(AdminClient):
    """One pouchdb-server process on 127.0.0.1 with a server admin."""

    kind: ClassVar[str] = "pouchdb-server"
    admin_user: str = "admin"
    admin_password: str = "pass"
    port: int = 0
    host: str = "127.0.0.1"
    in_memory: bool = True
    data_dir: Path | None = None
    node_dir: Path = NODE_DIR
    # Node's old-space limit in MB (None: node's default). A million docs in memory need more
    # than the default, or the backend spends its time collecting garbage.
    heap_mb: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: str | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> PouchServer:
        if self._proc is not None:
            return self
        if not self.port:
            self.port = free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="couchgate-backend-")
            self.data_dir = Path(self._tmp)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "config.json"
        config.write_text(json.dumps({"admins": {self.admin_user: self.admin_password}}))
        cmd = ["node", *([f"--max-old-space-size={self.heap_mb}"] if self.heap_mb else []),
               str(pouchdb_server_bin(self.node_dir))]  # fmt: skip
        if self.in_memory:
            cmd.append("--in-memory")
        cmd += [
            "--host", self.host, "--port", str(self.port),
            "--config", str(config), "--dir", str(self.data_dir), "--no-stdout-logs",
        ]  # fmt: skip
        log = (self.data_dir / "backend.log").open("ab")
        self._proc = subprocess.Popen(
            cmd, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BackendError(f"pouchdb-server exited with {self._proc.returncode}; see {self.data_dir}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise BackendError(f"pouchdb-server did not answer on {self.url} within {timeout:.0f}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exit_code(self) -> int | None:
        """The process's exit status once it has ended by itself, else None."""
        return self._proc.poll() if self._proc is not None else None

    def kill(self) -> None:
        """Stop the process abruptly (tests use this to take the upstream down)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def restart(self, timeout: float = 30.0) -> PouchServer:
        """Start again on the same port (the data is kept only when not in memory)."""
        if self._proc is not None:
            self.kill()
        return self.start(timeout)

    def __enter__(self) -> PouchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The project's test CouchDB (a sibling of the repository: /work/shared/couchdb beside /work/main).
COUCHDB_SCRIPT = PROJECT_ROOT.parent / "shared" / "couchdb" / "couchdb.sh"


def stop_epmd_of(data_dir: Path | str) -> None:
    """Stop the Erlang port mapper a CouchDB started from `data_dir` (couchdb.sh copies
    CouchDB there): CouchDB leaves it running, listening on 4369, after it stops."""
    marker = str(Path(data_dir).resolve())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").startswith(marker) and argv[0].endswith(b"/epmd"):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGTERM)


@dataclass
class CouchServer(AdminClient):
    """An Apache CouchDB on 127.0.0.1: one already running (`at`), or one started and stopped
    here with the project's test script (`scripted`)."""

    kind: ClassVar[str] = "couchdb"
    base: str = ""
    admin_user: str = "admin"
    admin_password: str = "pass"
    script: Path | None = None
    port: int = 0
    data_dir: Path | None = None
    _started: bool = field(default=False, init=False, repr=False)
    _tmp: str | None = field(default=None, init=False, repr=False)

    @classmethod
    def at(cls, url: str) -> CouchServer:
        """A running CouchDB; `url` carries the server admin's name and password."""
        parts = urlsplit(url)
        if not parts.username or parts.password is None or parts.hostname is None:
            raise BackendError("a CouchDB URL needs the admin's credentials: http://admin:pass@host:port")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        base = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        return cls(base=base, admin_user=parts.username, admin_password=parts.password)

    @classmethod
    def scripted(
        cls, script: Path = COUCHDB_SCRIPT, port: int = 0, data_dir: Path | None = None
    ) -> CouchServer:
        """A CouchDB this object starts with `script start PORT DIR` and stops again."""
        return cls(script=script, port=port, data_dir=data_dir)

    @property
    def url(self) -> str:
        return self.base

    def start(self, timeout: float = 90.0) -> CouchServer:
        if self.script is not None and not self._started:
            if not self.script.exists():
                raise BackendError(f"no CouchDB start script at {self.script}")
            if not self.port:
                self.port = free_port()
            if self.data_dir is None:
                self._tmp = tempfile.mkdtemp(prefix="couchgate-couchdb-")
                self.data_dir = Path(self._tmp)
            env = {**os.environ, "COUCHDB_USER": self.admin_user, "COUCHDB_PASSWORD": self.admin_password}
            self._started = True  # from here on, stop() must run the script's stop
            out = subprocess.run(
                [str(self.script), "start", str(self.port), str(self.data_dir)],
                env=env, capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                self.stop()
                raise BackendError(f"CouchDB did not start: {out.stderr.strip()[-500:]}")
            self.base = CouchServer.at(out.stdout.strip().splitlines()[-1]).base
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise BackendError(f"CouchDB at {self.url} does not answer its admin")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.script is not None and self._started:
            subprocess.run(
                [str(self.script), "stop", str(self.port), str(self.data_dir)],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            self._started = False
            if self.data_dir is not None:
                stop_epmd_of(self.data_dir)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> CouchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Backend = PouchServer | CouchServer


def backend_from(spec: str | None, *, heap_mb: int | None = None) -> Backend:
    """A backend named on a command line or in the environment: empty or `pouchdb-server`
    (embedded), `couchdb` or `couchdb:PORT` (the test script starts one), or the URL of a
    running CouchDB with its admin's credentials."""
    if not spec or spec == "pouchdb-server":
        return PouchServer(heap_mb=heap_mb)
    if spec == "couchdb" or spec.startswith("couchdb:"):
        port = spec.partition(":")[2]
        return CouchServer.scripted(port=int(port) if port else 0)
    if spec.startswith(("http://", "https://")):
        return CouchServer.at(spec)
    raise BackendError(
        f"unknown backend {spec!r}: pouchdb-server, couchdb[:PORT] or http://admin:pass@host:port"
    )
