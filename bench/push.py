"""An offline device's push through couchgate versus the same push straight into the backend.

    .venv/bin/python -m bench.push [--preset 100k] [--rounds 3] [--backend couchdb:PORT]

Loads the demo data set into `medic`, starts couchgate with the audit log on (its default),
and measures, with real PouchDB 9 in Node (tests/e2e/pouch.js `push_timed`):
- a CHW (`chw1`) pushing 500 and 2,000 new reports about people of their area, then the same
  docs again after editing every one of them (a batch of edits), through couchgate, against
  the same push straight into `medic` as the server admin (no access rules, no audit);
- the cost of a write against the size of the user's scope: 500 new reports pushed by a user
  whose scope holds about 300 docs (`chw_small`, facility: six households) and by the
  supervisor (about 20,000 docs in scope at 100k), each against its own direct push.
Each round pushes new docs (new ids), so nothing is a no-op. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    add_backend_arg,
    backend_flag,
    couchgate,
    describe,
    get_json,
    median,
    open_backend,
    run_pouch,
    short_name,
    wait_ready,
    write_section,
)
from proxy.couch.client import basic_auth_header
from proxy.devserver.backend import Backend
from proxy.seed.generator import lineage, preset
from proxy.seed.loader import load

SIZES = (500, 2000)
SCOPE_DOCS = 500
AREA = "d0-hc0-a0"  # chw1's area
SMALL_HOUSEHOLDS = [f"{AREA}-h{i}" for i in range(6)]  # chw_small's facilities (~300 docs)


def reports(n: int, submitter: list[str], patients: list[str]) -> list[dict[str, Any]]:
    """`n` new reports about `patients` (round robin), submitted by `submitter` (a lineage)."""
    run = uuid.uuid4().hex[:8]
    return [
        {"_id": f"push-{run}-{i:05d}", "type": "data_record", "form": "bench_visit",
         "reported_date": 1_700_000_000_000 + i, "contact": lineage(submitter),
         "fields": {"patient_uuid": patients[i % len(patients)], "temperature": 36.6, "n": i}}
        for i in range(n)
    ]  # fmt: skip


def push(url: str, auth: dict[str, Any], docs: list[dict[str, Any]], edit: bool) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(orjson.dumps(docs))
    try:
        result = run_pouch({"op": "push_timed", "url": url, "auth": auth, "docs_file": f.name, "edit": edit})
    finally:
        Path(f.name).unlink()
    assert result["docs_written"] == len(docs) and result["failures"] == 0, result
    assert not edit or (result["edits_written"] == len(docs) and result["edit_failures"] == 0), result
    return result


# Who submits each user's reports (a lineage, nearest first): the user's own contact.
SUBMITTERS = {
    "chw1": [AREA + "-chw", AREA, "d0-hc0", "d0"],
    "chw_small": [f"{SMALL_HOUSEHOLDS[0]}-p0", SMALL_HOUSEHOLDS[0], AREA, "d0-hc0", "d0"],
    "supervisor": ["d0-hc0-sup", "d0-hc0", "d0"],
}


def people_in(all_docs: dict[str, Any], limit: int = 50) -> list[str]:
    """Some people among an `_all_docs?include_docs=true` answer (report subjects)."""
    docs = [row["doc"] for row in all_docs["rows"]]
    return [d["_id"] for d in docs if d.get("type") == "contact" and d.get("contact_type") == "person"][
        :limit
    ]


def people_of(gateway: str, user: str) -> list[str]:
    """Some people the user may read."""
    auth = basic_auth_header(user, f"{user}-pass")
    return people_in(get_json(f"{gateway}/medic/_all_docs?include_docs=true", auth))


def add_small_user(backend: Backend) -> None:
    """`chw_small`: a CHW whose facilities are six households of chw1's area."""
    doc = {"_id": "org.couchdb.user:chw_small", "name": "chw_small", "password": "chw_small-pass", "type": "user",
           "roles": ["chw"], "facility_id": SMALL_HOUSEHOLDS, "contact_id": f"{SMALL_HOUSEHOLDS[0]}-p0"}  # fmt: skip
    status, current = backend.request("GET", "/_users/org.couchdb.user:chw_small")
    if status == 200 and isinstance(current, dict):
        doc["_rev"] = current["_rev"]
    status, body = backend.request("PUT", "/_users/org.couchdb.user:chw_small", doc)
    assert status in (201, 202), body


def measure(spec: str, preset_name: str, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": rounds}
    with open_backend(spec) as backend:
        result["backend"], result["backend_name"] = describe(backend), short_name(backend)
        report = asyncio.run(
            load(backend.url, backend.admin_user, backend.admin_password, "medic", preset(preset_name))
        )
        result["docs"] = report.docs_total
        add_small_user(backend)
        admin = {"basic": [backend.admin_user, backend.admin_password]}
        direct_url = f"{backend.url}/medic"
        with couchgate(backend, "medic") as (gateway, _):
            wait_ready(gateway)
            admin_auth = basic_auth_header(backend.admin_user, backend.admin_password)
            users = {user: (submitter, people_of(gateway, user)) for user, submitter in SUBMITTERS.items()}
            result["scope"] = {
                u: get_json(f"{gateway}/_couchgate/users/{u}/scope", admin_auth)["total"] for u in users
            }
            via_url = f"{gateway}/medic"
            for n in SIZES:
                via, direct = [], []
                for _ in range(rounds):
                    submitter, patients = users["chw1"]
                    auth = {"basic": ["chw1", "chw1-pass"]}
                    via.append(push(via_url, auth, reports(n, submitter, patients), edit=n == SIZES[0]))
                    direct.append(
                        push(direct_url, admin, reports(n, submitter, patients), edit=n == SIZES[0])
                    )
                result[f"new_{n}"] = (
                    median([r["push_ms"] for r in via]),
                    median([r["push_ms"] for r in direct]),
                )
                if n == SIZES[0]:
                    result[f"edit_{n}"] = (
                        median([r["edit_ms"] for r in via]),
                        median([r["edit_ms"] for r in direct]),
                    )
            for user in ("chw_small", "supervisor"):
                via, direct = [], []
                for _ in range(rounds):
                    submitter, patients = users[user]
                    auth = {"basic": [user, f"{user}-pass"]}
                    via.append(push(via_url, auth, reports(SCOPE_DOCS, submitter, patients), edit=False))
                    direct.append(
                        push(direct_url, admin, reports(SCOPE_DOCS, submitter, patients), edit=False)
                    )
                result[f"scope_{user}"] = (
                    median([r["push_ms"] for r in via]),
                    median([r["push_ms"] for r in direct]),
                )
    return result


def table(r: dict[str, Any]) -> str:
    lines = ["| push by chw1 (audit on) | via couchgate | direct | ratio |", "|---|---|---|---|"]
    for key, label in ((f"new_{SIZES[0]}", f"{SIZES[0]:,} new reports"), (f"edit_{SIZES[0]}", f"the same {SIZES[0]:,}, each edited"),
                       (f"new_{SIZES[1]}", f"{SIZES[1]:,} new reports")):  # fmt: skip
        via, direct = r[key]
        lines.append(f"| {label} | {via / 1000:.2f} s | {direct / 1000:.2f} s | {via / direct:.2f}x |")
    lines += ["", f"Write cost against the size of the user's scope ({SCOPE_DOCS:,} new reports each):", "",
              "| user | docs in scope | via couchgate | direct | ratio | ms per doc via couchgate |", "|---|---|---|---|---|---|"]  # fmt: skip
    for user in ("chw_small", "supervisor"):
        via, direct = r[f"scope_{user}"]
        lines.append(
            f"| {user} | {r['scope'][user]:,} | {via / 1000:.2f} s | {direct / 1000:.2f} s | {via / direct:.2f}x "
            f"| {via / SCOPE_DOCS:.2f} |"
        )
    small, big = r["scope_chw_small"][0], r["scope_supervisor"][0]
    lines.append(
        f"\n{r['scope']['supervisor']:,} docs in scope against {r['scope']['chw_small']:,}: a write costs {big / small:.2f}x."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="100k")
    parser.add_argument("--rounds", type=int, default=3)
    add_backend_arg(parser)
    args = parser.parse_args()
    r = measure(args.backend, args.preset, args.rounds)
    flag = backend_flag(args.backend)
    body = "\n".join([
        f"Command: `.venv/bin/python -m bench.push --preset {args.preset} --rounds {args.rounds}{' ' + flag if flag else ''}`",
        f"(medians of {args.rounds} rounds; {r['docs']:,} docs in `medic`; {r['backend']}; couchgate as a",
        "subprocess with the audit log on; PouchDB 9 in Node pushes from an in-memory db holding only the new",
        "docs, timed from the start of `replicate.to` to its end; 'direct' is the same push of other new docs",
        "straight into `medic` as the server admin).",
        "",
        table(r),
    ])  # fmt: skip
    write_section(f"Offline push: {r['backend_name']}", body)
    print(table(r))


if __name__ == "__main__":
    main()
