"""Start and stop an embedded pouchdb-server (the CouchDB-compatible test backend).

pouchdb-server is installed by `make` into `node/node_modules` (git-ignored, pinned in
`node/package-lock.json`). It rewrites its config file with the admin password hashed, so
the config is written fresh on every start.
"""

from __future__ import annotations

import base64
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


@dataclass
class PouchServer:
    """One pouchdb-server process on 127.0.0.1 with a server admin."""

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

    @property
    def auth_header(self) -> str:
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        return f"Basic {token}"

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
