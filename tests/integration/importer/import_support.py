"""Helpers for the import tests: calling `/import` and couchgate as a subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

import processes
from support import Gateway


async def do_import(
    gw: Gateway, path: str, auth: str, payload: Any, query: str = "", ndjson: bool = False
) -> dict[str, Any]:
    """One import that must be understood (200); NDJSON answers come back in JSON's shape."""
    if isinstance(payload, bytes):
        data, headers = payload, {"Content-Type": "application/json"}
    elif ndjson:
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
        assert "summary" in lines[-1], lines[-3:]
        return {"results": lines[:-1], "summary": lines[-1]["summary"]}
    return dict(body)


def statuses(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in answer["results"]]


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


couchgate_process = processes.couchgate_process  # kept where the import tests look for it
