"""`GET /_couchgate/console` and its assets: plain HTML, JavaScript and CSS from
`proxy/console/static/`, no build step.

The files are public (they hold no data: the app logs in with `POST /_session`, the same
credentials as CouchDB, and then reads couchgate's own API, which checks every call); only
the named files are served, read once at start. Answers forbid framing and inline or
foreign scripts (Content-Security-Policy), and are not cached past a restart.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from proxy.errors import NotFound
from proxy.keys import SETTINGS

STATIC = Path(__file__).parent / "static"
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.suffix in TYPES and p.suffix != ".html"}
INDEX = (STATIC / "index.html").read_text(encoding="utf-8")


def _answer(body: bytes, suffix: str) -> web.Response:
    return web.Response(body=body, content_type=TYPES[suffix], charset="utf-8", headers=HEADERS)


async def console(request: web.Request) -> web.Response:
    """The console's page; the main database's name is written into it."""
    page = INDEX.replace("{{DB}}", html.escape(request.app[SETTINGS].db, quote=True))
    return _answer(page.encode(), ".html")


async def console_asset(request: web.Request) -> web.Response:
    """One of the console's scripts, style sheets or images."""
    name = request.match_info["asset"]
    body = ASSETS.get(name)
    if body is None:
        raise NotFound("missing")
    return _answer(body, Path(name).suffix)
