"""`couchgate dev` (what `make run` calls): an embedded pouchdb-server with the demo data
set, and couchgate in front of it on 127.0.0.1:5988. Ctrl-C stops both."""

from __future__ import annotations

import asyncio
import secrets
import sys

from proxy.devserver.backend import PROJECT_ROOT, BackendError, PouchServer
from proxy.seed.generator import DemoUser, preset
from proxy.seed.loader import load
from proxy.server import run_server
from proxy.settings import load_settings

DB = "medic"


def banner(url: str, backend: PouchServer, users: list[DemoUser], docs: int) -> str:
    lines = [
        "",
        f"couchgate      {url}   (PouchDB: new PouchDB('{url}/{DB}', {{auth: ...}}))",
        f"backend        {backend.url}   (pouchdb-server)",
        f"demo data      {docs} docs in '{DB}'",
        f"health         {url}/_couchgate/health   ready: {url}/_couchgate/ready",
        "",
        "demo users (name / password, roles, facility):",
        f"  {backend.admin_user} / {backend.admin_password}   CouchDB server admin",
    ]
    for user in users:
        facility = ", ".join(user.facility_ids) if user.facility_ids else "-"
        admin = "   (CouchDB server admin)" if user.server_admin else ""
        lines.append(f"  {user.name} / {user.password}   {', '.join(user.roles)}   {facility}{admin}")
    lines += ["", "Ctrl-C stops couchgate and the backend.", ""]
    return "\n".join(lines)


def run_dev(preset_name: str = "small", port: int = 5988, backend_port: int = 0, seed: int = 1) -> int:
    backend = PouchServer(port=backend_port, data_dir=PROJECT_ROOT / ".couchgate" / "backend")
    try:
        backend.start()
        data = preset(preset_name, seed=seed)
        report = asyncio.run(load(backend.url, backend.admin_user, backend.admin_password, DB, data))
        settings = load_settings(
            couch_url=backend.url,
            couch_user=backend.admin_user,
            couch_password=backend.admin_password,
            db=DB,
            port=port,
            jwt_secret=secrets.token_urlsafe(32),
            log_json=False,
        )
        url = f"http://{settings.host}:{settings.port}"
        print(banner(url, backend, data.users, report.docs_total), flush=True)
        run_server(settings, shutdown_timeout=5)
    except KeyboardInterrupt:
        pass
    except (OSError, BackendError) as exc:
        # One line, no traceback: the message says what to do (e.g. `make install`).
        print(f"couchgate dev: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.stop()
    return 0
