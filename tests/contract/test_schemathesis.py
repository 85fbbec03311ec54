"""schemathesis over every couchgate route (openapi/openapi.yaml), as the admin and as an
offline user, against couchgate as it runs (a real process) on a backend of its own (the
admin's random writes create and delete databases there): no 5xx and no answer the spec
does not allow. Bounded: a fixed number of examples per operation, a fixed seed, a time
budget. tests/contract/schemathesis.toml says where the spec cannot express a rule."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.devserver.backend import PouchServer, free_port

from offline_data import DOCS, PASSWORD, USERS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "openapi.yaml"
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES, BUDGET_SECONDS = "10", "45"  # per run: most of the budget goes to fuzzing


@pytest.fixture(scope="module")
def couchgate_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    backend = PouchServer().start()
    server: subprocess.Popen[bytes] | None = None
    try:
        backend.request("PUT", "/medic")
        members = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["chw"]}}
        backend.request("PUT", "/medic/_security", members)
        backend.request("POST", "/medic/_bulk_docs", {"docs": [dict(d) for d in DOCS]})
        for name, fields in USERS.items():
            backend.request("PUT", f"/_users/org.couchdb.user:{name}", {
                "_id": f"org.couchdb.user:{name}", "name": name, "password": PASSWORD.format(name),
                "type": "user", **fields})  # fmt: skip
        port = free_port()
        env = {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
               "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_DB": "medic",
               "COUCHGATE_PORT": str(port), "COUCHGATE_JWT_SECRET": "s" * 40,
               # schemathesis sends bad credentials by the hundred: the login throttle would turn
               # its every check into a 429 (the throttle has tests of its own, tests/security).
               "COUCHGATE_LOGIN_THROTTLE": "false"}  # fmt: skip
        with (tmp_path_factory.mktemp("couchgate") / "couchgate.log").open("wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, stderr=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_couchgate/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "couchgate did not get ready"
                time.sleep(0.2)
        yield url
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        backend.stop()


@pytest.mark.parametrize(
    ("who", "credentials"), [("admin", "admin:pass"), ("offline chw1", f"chw1:{PASSWORD.format('chw1')}")]
)
def test_schemathesis_finds_no_server_error_and_no_spec_violation(
    couchgate_url: str, who: str, credentials: str, tmp_path: Path
) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG),
        "run", str(SPEC), "--url", couchgate_url, "--auth", credentials, "--phases", "coverage,fuzzing",
        "--max-examples", EXAMPLES, "--max-time", BUDGET_SECONDS, "--seed", "16", "--no-color",
        "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"schemathesis as {who}:\n{report}"
    assert "Failures:" not in result.stdout and " passed" in result.stdout, report
