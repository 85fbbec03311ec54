"""The forum's scenario end to end: a CHW's data exported as `_all_docs` rows with their
`_rev`s, imported by their supervisor into another instance that already holds part of it,
then replicated by real PouchDB clients as the CHW and the supervisor."""

from __future__ import annotations

import uuid

import orjson
import pytest

from proxy.devserver.backend import PouchServer

from e2e_support import run_pouch
from offline_data import CHW1_READS, DOCS, PASSWORD
from offline_data import auth as offline_auth
from support import Gateway, gateway_settings, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

MISSING_IN_TARGET = {"p2", "r_p1", "r_p2", "r_house1", "house1", "p1"}
OUT_OF_SUPERVISOR_SCOPE = {"task_chw1", "org.couchdb.user:chw1"}


async def test_export_import_then_replicate(gw: Gateway, medic: str, backend: PouchServer) -> None:
    # Export: what chw1 replicates from the source instance, as _all_docs rows with _revs.
    status, export, _ = await gw.call(
        "GET", f"/{medic}/_all_docs?include_docs=true", auth=offline_auth("chw1")
    )
    assert status == 200 and {r["id"] for r in export["rows"]} == CHW1_READS
    assert all(r["doc"]["_rev"] for r in export["rows"])

    # Target: the same tree, without some of chw1's docs, and an edit the export lacks.
    target = f"medic-target-{uuid.uuid4().hex[:8]}"
    backend.request("PUT", f"/{target}")
    backend.request("PUT", f"/{target}/_security",
                    {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": ["chw", "chw_supervisor"]}})  # fmt: skip
    kept = [dict(d) for d in DOCS if d["_id"] not in MISSING_IN_TARGET | {"task_chw1"}]
    assert backend.request("POST", f"/{target}/_bulk_docs", {"docs": kept})[0] == 201
    target_gw = await start_gateway(gateway_settings(backend, target))
    try:
        raw = orjson.dumps(export)  # exactly the file a team would carry over
        status, answer, _ = await target_gw.call("POST", "/import", auth=offline_auth("supervisor"), data=raw,
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
        assert status == 200, answer
        by_id = {r["id"]: r for r in answer["results"]}
        assert {i for i, r in by_id.items() if r["status"] == "created"} == MISSING_IN_TARGET
        # Outside the supervisor's scope: chw1's task (missing in the target) and chw1's
        # user-settings doc (present there). Both answer the same, without a rev: the answer
        # does not tell which of them exists.
        refused = {i: r for i, r in by_id.items() if r["status"] == "forbidden"}
        assert set(refused) == OUT_OF_SUPERVISOR_SCOPE, refused
        assert {r["reason"] for r in refused.values()} == {"the document is outside your replication scope"}
        assert all("rev" not in r for r in refused.values())
        assert {r["status"] for i, r in by_id.items() if i not in MISSING_IN_TARGET | set(refused)} == {
            "unchanged"
        }

        url = f"{target_gw.url}/{target}"
        for user in ("chw1", "supervisor"):
            pulled = await run_pouch(
                {"op": "pull_push", "url": url, "auth": {"basic": [user, PASSWORD.format(user)]}}
            )
            assert set(pulled["ids"]) >= MISSING_IN_TARGET, (user, MISSING_IN_TARGET - set(pulled["ids"]))
        again = await target_gw.call("POST", "/import", auth=offline_auth("supervisor"), data=raw,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        assert {r["status"] for r in again[1]["results"]} == {"unchanged", "forbidden"}
    finally:
        await stop_gateway(target_gw)
        backend.request("DELETE", f"/{target}")
