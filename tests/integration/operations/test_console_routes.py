"""/_couchgate/console: the console's files, served to anyone, locked down by headers."""

from __future__ import annotations

from pathlib import Path

from proxy.devserver.backend import PouchServer

from support import Gateway, assert_couch_error

STATIC = Path(__file__).resolve().parents[3] / "proxy" / "console" / "static"


async def test_the_page_is_served_without_credentials_with_the_main_db(gateway: Gateway, db: str) -> None:
    status, body, headers = await gateway.call("GET", "/_couchgate/console")
    assert status == 200
    page = body.decode()
    assert f'<meta name="couchgate-db" content="{db}">' in page and "{{DB}}" not in page
    assert headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    # Anonymous: the page holds no data; the API behind it still asks for credentials.
    status, body, _ = await gateway.call("GET", "/_couchgate/users")
    assert_couch_error(status, body, 401, "unauthorized")


async def test_assets_are_served_and_nothing_else(gateway: Gateway) -> None:
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, body, headers = await gateway.call("GET", f"/_couchgate/console/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert body == (STATIC / name).read_bytes()
    for name in ("index.html", "missing.js", "..%2Froutes.py", "%2e%2e%2f__init__.py"):
        status, body, _ = await gateway.call("GET", f"/_couchgate/console/{name}", raw_path=True)
        assert_couch_error(status, body, 404, "not_found")


async def test_the_page_does_not_ask_couchdb(gateway: Gateway, backend: PouchServer) -> None:
    """Broken credentials do not matter to the static files (no upstream check)."""
    status, _, _ = await gateway.call("GET", "/_couchgate/console", auth="Basic bm9ib2R5Om5vcGU=")
    assert status == 200
