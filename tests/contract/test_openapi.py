"""The router and openapi/openapi.yaml describe the same set of routes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from proxy.app import create_app
from proxy.settings import load_settings

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "head", "options", "patch"}


def spec_routes() -> set[tuple[str, str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    routes = set()
    for path, item in spec["paths"].items():
        any_method = item.get("x-couchgate-any-method", False)
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            op_id = op["operationId"]
            if any_method:
                name, _, suffix = op_id.rpartition("_")
                assert suffix == method, f"{op_id} must end in _{method}"
                routes.add(("*", path, name))
            else:
                routes.add((method.upper(), path, op_id))
    return routes


def router_routes() -> set[tuple[str, str, str]]:
    app = create_app(load_settings(couch_url="http://127.0.0.1:1"))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        assert route.name, f"route {route.method} {path} has no name"
        routes.add((route.method, path, route.name))
    return routes


def test_router_and_spec_match() -> None:
    assert router_routes() == spec_routes()


def test_operation_ids_are_unique() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    ids = [
        op["operationId"] for item in spec["paths"].values() for m, op in item.items() if m in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))
