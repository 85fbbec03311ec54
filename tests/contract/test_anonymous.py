"""Anonymous callers get CouchDB's 401 with a challenge on every route but the public ones."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.settings import load_settings

from support import assert_couch_error

# Public to anonymous callers: probes, logging in, the console's static files (its data
# comes from the protected routes), and (below) CouchDB's welcome `GET /`.
PUBLIC_ROUTES = {"health", "ready", "issue_token", "session", "console", "console_asset"}
SAMPLE = {"db": "medic", "doc_id": "doc-1", "name": "chw1", "path": "medic/_all_docs", "asset": "app.js"}
ANY_METHOD = ("GET", "PUT", "POST", "DELETE", "COPY")


def concrete(formatter: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLE[m.group(1)], formatter)


def protected_requests() -> list[tuple[str, str, str]]:
    """(route name, method, url) for every route of the router that is not public."""
    app = create_app(load_settings(couch_url="http://127.0.0.1:1"))
    found = []
    for route in app.router.routes():
        if route.name in PUBLIC_ROUTES or route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        url = concrete(info.get("path") or info.get("formatter", ""))
        for method in ANY_METHOD if route.method == "*" else (route.method,):
            found.append((str(route.name), method, url))
    return found


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    # Nothing listens upstream: an anonymous refusal must not need CouchDB at all.
    app = create_app(load_settings(couch_url="http://127.0.0.1:1", audit_enabled=False))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def test_every_route_is_covered() -> None:
    names = {name for name, _, _ in protected_requests()}
    assert {"metrics", "audit_list", "user_scope", "conflicts_list", "import_db", "couchdb_proxy"} <= names


@pytest.mark.parametrize(("name", "method", "url"), protected_requests(), ids=lambda v: str(v))
async def test_anonymous_gets_401_with_challenge(
    client: TestClient, name: str, method: str, url: str
) -> None:
    async with client.request(method, url, json={} if method in {"PUT", "POST"} else None) as resp:
        body = await resp.json()
        assert_couch_error(resp.status, body, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (name, dict(resp.headers))


async def test_public_routes_do_not_ask_for_credentials(client: TestClient) -> None:
    for method, url in (("GET", "/"), ("HEAD", "/"), ("GET", "/_couchgate/health"), ("GET", "/_session")):
        async with client.request(method, url) as resp:
            assert resp.status != 401, (method, url)
    async with client.post("/_couchgate/token", json={}) as resp:
        assert resp.status != 401


async def test_metrics_can_be_made_public() -> None:
    app = create_app(load_settings(couch_url="http://127.0.0.1:1", audit_enabled=False, metrics_public=True))
    async with TestClient(TestServer(app)) as client, client.get("/_couchgate/metrics") as resp:
        assert resp.status == 200
