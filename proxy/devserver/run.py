"""`couchgate dev` (what `make run` calls): an embedded pouchdb-server with the demo data
set, and couchgate in front of it on 127.0.0.1:5988. The backend is restarted when it dies
(`proxy.devserver.supervise`). Ctrl-C stops both."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from proxy.devserver.backend import PROJECT_ROOT, BackendError, PouchServer
from proxy.devserver.supervise import serve_dev
from proxy.logs import configure_logging
from proxy.seed.generator import DemoData, DemoUser, preset
from proxy.seed.loader import load, restore_server_admins
from proxy.settings import load_settings

DB = "medic"


def banner(url: str, backend: PouchServer, users: list[DemoUser], docs: int) -> str:
    lines = [
        "",
        f"couchgate      {url}   (PouchDB: new PouchDB('{url}/{DB}', {{auth: ...}}))",
        f"backend        {backend.url}   (pouchdb-server, pid {backend.pid}, "
        f"{'in memory' if backend.in_memory else f'data in {backend.data_dir}'}; restarted if it dies)",
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


def reloader(backend: PouchServer, data: DemoData) -> Callable[[], Awaitable[None]]:
    """What puts the demo data back after a restart: all of it in memory; on disk, the data
    is kept and only the demo server admins (in the config file, written fresh) come back."""

    async def reload() -> None:
        if backend.in_memory:
            await load(backend.url, backend.admin_user, backend.admin_password, DB, data)
        else:
            await restore_server_admins(backend.url, backend.admin_user, backend.admin_password, data)

    return reload


def run_dev(
    preset_name: str = "small",
    port: int = 5988,
    backend_port: int = 0,
    seed: int = 1,
    on_disk: bool = False,
    backend_dir: Path | None = None,
) -> int:
    data_dir = backend_dir or PROJECT_ROOT / ".couchgate" / "backend"
    backend = PouchServer(port=backend_port, data_dir=data_dir, in_memory=not on_disk)
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
        configure_logging(settings.log_level, settings.log_json)
        asyncio.run(serve_dev(settings, backend, reloader(backend, data), shutdown_timeout=5))
    except KeyboardInterrupt:
        pass
    except (OSError, BackendError) as exc:
        # One line, no traceback: the message says what to do (e.g. `make install`).
        print(f"couchgate dev: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.stop()
    return 0
