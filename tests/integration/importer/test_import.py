"""POST /import against the real backend: shapes, conflict modes, per-doc results, rules."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.devserver.backend import PouchServer

from offline_data import auth as offline_auth
from offline_data import person, place, report
from support import Gateway, TestUser, assert_couch_error, gateway_settings, start_gateway, stop_gateway


async def do_import(
    gw: Gateway, path: str, auth: str, payload: Any, query: str = "", ndjson: bool = False
) -> dict[str, Any]:
    if ndjson:
        data = b"".join(orjson.dumps(d) + b"\n" for d in payload)
        headers = {"Content-Type": "application/x-ndjson"}
    else:
        data, headers = orjson.dumps(payload), {"Content-Type": "application/json"}
    status, body, _resp_headers = await gw.call(
        "POST", f"{path}{query}", auth=auth, data=data, headers=headers
    )
    assert status == 200, body
    if ndjson:
        lines = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        return {"results": lines[:-1], "summary": lines[-1]["summary"]}
    return dict(body)


def statuses(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in answer["results"]]


async def test_every_input_shape(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    shapes = {
        "array": [{"_id": "a1", "v": 1}],
        "docs": {"docs": [{"_id": "d1", "v": 1}]},
        "rows": {
            "total_rows": 1,
            "rows": [{"id": "r1", "key": "r1", "value": {"rev": "7-x"}, "doc": {"_id": "r1", "_rev": "7-x"}}],
        },
        "mixed": [
            {"id": "m1", "key": "m1", "value": {"rev": "2-y"}, "doc": {"_id": "m1", "_rev": "2-y"}},
            {"_id": "m2"},
            {"doc": {"_id": "m3"}},
        ],
    }
    for name, payload in shapes.items():
        answer = await do_import(gateway, path, alice, payload)
        assert all(r["status"] == "created" for r in answer["results"]), (name, answer)
    answer = await do_import(gateway, path, alice, [{"_id": "n1"}, {"_id": "n2"}], ndjson=True)
    assert statuses(answer) == [("n1", "created"), ("n2", "created")] and answer["summary"] == {"created": 2}
    _status, doc, _ = await gateway.call("GET", f"/{db}/r1", auth=alice)
    assert doc["_rev"].startswith("1-")  # the export's _rev was never sent upstream


async def test_nested_ids_are_untouched_and_ids_are_generated_deterministically(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    doc = {
        "type": "data_record",
        "fields": {"inputs": {"contact": {"_id": "p1", "_rev": "3-z"}}},
        "contact": {"_id": "chw"},
    }
    first = await do_import(gateway, f"/{db}/_couchgate/import", alice, [doc, doc])
    again = await do_import(gateway, f"/{db}/_couchgate/import", alice, [doc, doc])
    ids = [r["id"] for r in first["results"]]
    assert len(set(ids)) == 2 and [r["id"] for r in again["results"]] == ids
    assert [r["status"] for r in again["results"]] == ["unchanged", "unchanged"]
    _, stored, _ = await gateway.call("GET", f"/{db}/{ids[0]}", auth=alice)
    assert stored["fields"]["inputs"]["contact"] == {"_id": "p1", "_rev": "3-z"} and stored["contact"] == {
        "_id": "chw"
    }


async def test_conflict_modes_and_reimport(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    await do_import(gateway, path, alice, [{"_id": "x", "v": 1}, {"_id": "same", "v": 1}])
    changed = [{"_id": "x", "v": 2, "_rev": "9-bogus"}, {"_id": "same", "v": 1, "_rev": "5-other"}]
    skip = await do_import(gateway, path, alice, changed)
    assert statuses(skip) == [("x", "skipped"), ("same", "unchanged")]
    over = await do_import(gateway, path, alice, changed, "?on_conflict=overwrite")
    assert statuses(over) == [("x", "updated"), ("same", "unchanged")]
    assert backend.request("GET", f"/{db}/x")[1]["v"] == 2
    both = await do_import(gateway, path, alice, [{"_id": "x", "v": 3}], "?on_conflict=keep_both")
    assert statuses(both) == [("x", "conflict")] and both["results"][0]["rev"].startswith("1-")
    _, leaves = backend.request("GET", f"/{db}/x?conflicts=true")
    assert leaves["v"] == 2 and leaves["_conflicts"] == [both["results"][0]["rev"]]
    again = await do_import(gateway, path, alice, [{"_id": "x", "v": 3}], "?on_conflict=keep_both")
    assert again["results"][0]["rev"] == both["results"][0]["rev"]
    assert (
        backend.request("GET", f"/{db}/x?conflicts=true")[1]["_conflicts"] == leaves["_conflicts"]
    )  # no second branch
    status, body, _ = await gateway.call("POST", f"{path}?on_conflict=merge", auth=alice, json=[])
    assert_couch_error(status, body, 400, "bad_request")


async def test_mixed_payload_and_dry_run(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    await do_import(gateway, path, alice, [{"_id": "old", "v": 1}, {"_id": "twin", "v": 1}])
    payload = [
        {"_id": "new"}, {"_id": "old", "v": 2}, {"_id": "twin", "v": 1}, "not a doc", {"_id": "_local/cp"},
        {"_id": "_design/app"}, {"_id": "_odd"}, {"_id": "att", "_attachments": {"a": {"content_type": "text/plain", "data": "!!notbase64"}}},
        {"_id": "stub", "_attachments": {"a": {"stub": True}}}, {"_id": 7},
    ]  # fmt: skip
    dry = await do_import(gateway, path, alice, payload, "?dry_run=true")
    assert [r["status"] for r in dry["results"]] == ["created", "skipped", "unchanged"] + ["invalid"] * 7
    assert all(r["reason"] for r in dry["results"][3:]) and dry["dry_run"] is True
    assert backend.request("GET", f"/{db}/new")[0] == 404
    real = await do_import(gateway, path, alice, payload)
    assert [r["status"] for r in real["results"]] == [r["status"] for r in dry["results"]]
    assert [r["index"] for r in real["results"]] == list(range(len(payload)))
    assert real["summary"] == {"created": 1, "skipped": 1, "unchanged": 1, "invalid": 7}
    good = {
        "_id": "att2",
        "_attachments": {"a.txt": {"content_type": "text/plain", "data": base64.b64encode(b"hi").decode()}},
    }
    assert statuses(await do_import(gateway, path, alice, [good])) == [("att2", "created")]
    assert statuses(await do_import(gateway, path, alice, [good])) == [("att2", "unchanged")]


async def test_not_json_is_400_and_bad_ndjson_lines_are_invalid(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    status, body, _ = await gateway.call(
        "POST",
        f"/{db}/_couchgate/import",
        auth=alice,
        data=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call("POST", f"/{db}/_couchgate/import", auth=alice, data=b'{"_id":"ok1"}\n{broken\n{"_id":"ok2"}\n',
                                         headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    lines = [orjson.loads(x) for x in body.splitlines()]
    assert [(r.get("id"), r.get("status")) for r in lines[:3]] == [
        ("ok1", "created"),
        (None, "invalid"),
        ("ok2", "created"),
    ]
    status, body, _ = await gateway.call(
        "POST", "/import", data=b"[]", headers={"Content-Type": "application/json"}
    )
    assert_couch_error(status, body, 401, "unauthorized")


async def test_offline_supervisor_imports_own_subtree_and_gets_forbidden_for_others(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    docs = [
        place("house_imp", "clinic", "area2", "hc1", "district1"),
        person("p_imp", "house_imp", "area2", "hc1", "district1", shortcode="7777"),
        report("r_imp", ("p_imp", "house_imp", "area2", "hc1"), patient_id="7777"),
        report("r_elsewhere", ("p9", "house3", "area3"), patient_uuid="p9"),
        {"_id": "settings", "settings": {}},
    ]
    answer = await do_import(gw, "/import", offline_auth("supervisor"), docs)
    assert statuses(answer) == [("house_imp", "created"), ("p_imp", "created"), ("r_imp", "created"),
                                ("r_elsewhere", "forbidden"), ("settings", "forbidden")]  # fmt: skip
    assert all(r["reason"] for r in answer["results"][3:])
    assert backend.request("GET", f"/{medic}/r_elsewhere")[0] == 404
    status, body, _ = await gw.call(
        "POST", "/other-db/_couchgate/import", auth=offline_auth("supervisor"), json=[]
    )
    assert_couch_error(status, body, 403, "forbidden")


async def test_concurrent_overlapping_imports(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"_id": f"c{i:03d}", "v": i} for i in range(300)]
    answers = await asyncio.gather(
        *(
            do_import(gateway, path, alice, docs[k * 100 : k * 100 + 200], "?on_conflict=overwrite")
            for k in range(2)
        )
    )
    for answer in answers:
        assert {r["status"] for r in answer["results"]} <= {"created", "unchanged", "updated"}, answer
    _, all_docs = backend.request("GET", f"/{db}/_all_docs")
    assert [r["id"] for r in all_docs["rows"]] == [d["_id"] for d in docs]
    _, one = backend.request("GET", f"/{db}/c150?conflicts=true")
    assert "_conflicts" not in one and one["v"] == 150


async def test_retry_after_the_connection_is_cut(
    gateway: Gateway, db: str, users: dict[str, TestUser], backend: PouchServer
) -> None:
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"
    docs = [{"type": "data_record", "n": i} for i in range(2000)]  # no _ids: the deterministic ones matter
    lines = b"".join(orjson.dumps(d) + b"\n" for d in docs)

    async def cut_body():
        yield lines[: len(lines) // 2]
        raise ConnectionResetError("cable pulled")

    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(
                gateway.url + path,
                data=cut_body(),
                headers={"Authorization": alice, "Content-Type": "application/x-ndjson"},
            ) as resp:
                await resp.read()
    await asyncio.sleep(0.5)
    answer = await do_import(gateway, path, alice, docs, ndjson=True)
    assert sum(answer["summary"].values()) == 2000 and set(answer["summary"]) <= {"created", "unchanged"}
    _, info = backend.request("GET", f"/{db}")
    assert info["doc_count"] == 2000
    final = await do_import(gateway, path, alice, docs, ndjson=True)
    assert final["summary"] == {"unchanged": 2000}


def test_cli_against_a_running_couchgate(
    tmp_path: Path, backend: PouchServer, users: dict[str, TestUser]
) -> None:
    from proxy.devserver.backend import free_port

    backend.request("PUT", "/cli-target")
    port = free_port()
    env = {**os.environ, "COUCHGATE_COUCH_URL": backend.url, "COUCHGATE_COUCH_USER": backend.admin_user,
           "COUCHGATE_COUCH_PASSWORD": backend.admin_password, "COUCHGATE_DB": "cli-target", "COUCHGATE_PORT": str(port)}  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        import time
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_couchgate/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        export = tmp_path / "export.json"
        export.write_bytes(
            orjson.dumps(
                {
                    "rows": [{"id": f"e{i}", "doc": {"_id": f"e{i}", "_rev": "4-x"}} for i in range(30)]
                    + [{"id": "bad", "doc": None}]
                }
            )
        )
        cli = [sys.executable, "-m", "proxy", "import", str(export), "--url", f"http://127.0.0.1:{port}",
               "--user", backend.admin_user, "--password", backend.admin_password, "--results", str(tmp_path / "r.jsonl")]  # fmt: skip
        out = subprocess.run(
            cli, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"}
        )
        assert out.returncode == 1, out.stdout + out.stderr  # one row carried no doc
        results = [orjson.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert [r["status"] for r in results] == ["created"] * 30 + ["invalid"]
        assert "created" in out.stdout and "30" in out.stdout
        export.write_bytes(orjson.dumps([{"_id": f"e{i}"} for i in range(30)]))
        out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert {orjson.loads(line)["status"] for line in (tmp_path / "r.jsonl").read_text().splitlines()} == {
            "unchanged"
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        backend.request("DELETE", "/cli-target")


async def test_ndjson_import_memory_is_flat_in_the_input_size(
    backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    """Measured on the import alone: this couchgate's scope index follows another database
    (the index grows with the database it follows, by design), and auditing is off."""
    import tracemalloc

    backend.request("PUT", "/unrelated")
    gateway = await start_gateway(gateway_settings(backend, "unrelated", audit_enabled=False))
    alice, path = users["alice"].auth, f"/{db}/_couchgate/import"

    async def peak_for(n: int, prefix: str) -> int:
        async def body():
            for start in range(0, n, 1000):
                yield b"".join(orjson.dumps({"_id": f"{prefix}{i:06d}", "type": "person", "name": "x" * 100}) + b"\n"
                               for i in range(start, min(n, start + 1000)))  # fmt: skip

        tracemalloc.start()
        try:
            created = 0
            async with gateway.http.post(gateway.url + path, data=body(),
                                         headers={"Authorization": alice, "Content-Type": "application/x-ndjson"}) as resp:  # fmt: skip
                async for line in resp.content:
                    created += b'"status":"created"' in line
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert created == n
        return peak

    try:
        small = await peak_for(3000, "s")
        large = await peak_for(12000, "l")
    finally:
        await stop_gateway(gateway)
        backend.request("DELETE", "/unrelated")
    assert large < small * 1.5, (small, large)  # four times the docs, about the same memory
