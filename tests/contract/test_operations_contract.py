"""The operations routes answer what openapi/openapi.yaml says they answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from proxy.devserver.backend import PouchServer

from support import Gateway, audited_gateway, basic

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml").read_text())


def schema_of(path: str, status: str, media: str = "application/json") -> dict[str, Any]:
    answer = SPEC["paths"][path]["get"]["responses"][status]
    if "$ref" in answer:
        answer = SPEC["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer["content"][media]["schema"]
    return {**schema, "components": SPEC["components"]}


def check(body: Any, path: str, status: str) -> None:
    validator = Draft202012Validator(schema_of(path, status))
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not problems, problems


async def call(gw: Gateway, path: str, auth: str | None) -> tuple[int, Any]:
    status, body, _ = await gw.call("GET", path, auth=auth)
    return status, body


async def test_users_and_verify_answer_their_schemas(backend: PouchServer, medic: str) -> None:
    admin = basic(backend.admin_user, backend.admin_password)
    async with audited_gateway(backend, medic) as gw:
        await gw.call("GET", f"/{medic}/_changes", auth=basic("chw1", "pw-chw1"))
        await gw.call("GET", f"/{medic}/_design/x/_view/y", auth=basic("chw1", "pw-chw1"))
        status, body = await call(gw, "/_couchgate/users?refresh=true", admin)
        assert status == 200 and body["users"]
        assert any(u["last_sync"] and u["refusals"] for u in body["users"]), body
        check(body, "/_couchgate/users", "200")
        for query, expected in (("?sort=x", "400"),):
            status, body = await call(gw, f"/_couchgate/users{query}", admin)
            assert str(status) == expected
            check(body, "/_couchgate/users", expected)
        status, body = await call(gw, "/_couchgate/users", basic("chw1", "pw-chw1"))
        assert status == 403
        check(body, "/_couchgate/users", "403")
        status, body = await call(gw, "/_couchgate/audit/verify", admin)
        assert status == 200 and body["intact"] is True
        check(body, "/_couchgate/audit/verify", "200")
        status, body = await call(gw, "/_couchgate/audit/verify?checkpoint=x", admin)
        assert status == 400
        check(body, "/_couchgate/audit/verify", "400")


async def test_console_answers_its_media_types(gateway: Gateway) -> None:
    spec = SPEC["paths"]
    status, _, headers = await gateway.call("GET", "/_couchgate/console")
    assert (
        status == 200
        and headers["Content-Type"].split(";")[0]
        in spec["/_couchgate/console"]["get"]["responses"]["200"]["content"]
    )
    media = spec["/_couchgate/console/{asset}"]["get"]["responses"]["200"]["content"]
    for asset in ("app.js", "style.css"):
        status, _, headers = await gateway.call("GET", f"/_couchgate/console/{asset}")
        assert status == 200 and headers["Content-Type"].split(";")[0] in media
    status, body, _ = await gateway.call("GET", "/_couchgate/console/nope.js")
    assert status == 404
    check(body, "/_couchgate/console/{asset}", "404")
