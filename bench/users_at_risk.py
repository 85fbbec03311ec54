"""The users-at-risk list at 20,000 offline users: what counting costs, and what a request costs.

    .venv/bin/python -m bench.users_at_risk [--areas 100] [--households 2] [--write]

Builds in-process (no backend) a scope index of a CHT tree with 20 districts x 10 health
centers x `--areas` CHW areas (one CHW user each, depth 2) plus a supervisor per health
center (unlimited depth): 20,200 offline users over about a million docs by default. Then:
- one full counting pass (`count_scope` for every user, what the background task does
  within its CPU budget): total CPU time, per user, and the wall time it takes at BUDGET;
- the request path (`users_page`, then the JSON encoding), with every count kept: the
  whole list sorted by docs, the warning filter, a page sorted by name; median of 20;
- the next pass after one doc changed: a report in one CHW area, then a new person in one
  (a change of the tree): CPU of deciding whose count still stands (`still_exact`) and of
  recounting the others, and how many those are;
- what the kept counts weigh (the process's RSS growth over the first pass).
Times are CPU seconds of this process (`time.process_time`), not wall clock.
`--write` adds the results to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import orjson

from bench.common import write_section
from bench.index_gc import rss_mb
from proxy.access.config import AppSettings, UserCtx
from proxy.access.scope_index import ScopeIndex
from proxy.activity import Activity
from proxy.seed.generator import SETTINGS, DemoData, Shape
from proxy.users_at_risk import BUDGET, Counted, Query, UsersAtRisk, still_exact, users_page


def build(shape: Shape) -> tuple[ScopeIndex, dict[str, UserCtx], float]:
    started = time.perf_counter()
    index = ScopeIndex()
    data = DemoData(shape)
    for n, doc in enumerate(data.docs()):
        doc["_rev"] = f"1-{n:032x}"
        index.apply(doc, n, leaves=(doc["_rev"],))
    users: dict[str, UserCtx] = {}
    for d in range(shape.districts):
        for h in range(shape.health_centers):
            hc = f"d{d}-hc{h}"
            users[f"sup-{hc}"] = UserCtx(f"sup-{hc}", ("chw_supervisor",), (hc,), f"{hc}-sup")
            for a in range(shape.areas):
                area = f"{hc}-a{a}"
                users[f"chw-{area}"] = UserCtx(f"chw-{area}", ("chw",), (area,), f"{area}-chw")
    return index, users, time.perf_counter() - started


class FakeSync:
    """What UsersAtRisk reads of IndexSync: the index and the settings (no I/O here)."""

    def __init__(self, index: ScopeIndex, settings: AppSettings) -> None:
        self.index = index
        self.settings = settings


def count(index: ScopeIndex, user: UserCtx, settings: AppSettings) -> Counted:
    keys: list[str] = []
    steps = index.counting(user, settings, keys=keys)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            by_kind: dict[str, int] = done.value
            return Counted(
                by_kind,
                sum(by_kind.values()),
                time.time(),
                index.ordinal,
                settings,
                user,
                index.looked_under(keys),
            )


def count_all(risk: UsersAtRisk, users: dict[str, UserCtx]) -> float:
    """CPU seconds of counting every user once (the process's own time: other load on the
    machine does not count)."""
    index, settings = risk.sync.index, risk.sync.settings
    started = time.process_time()
    for name, user in users.items():
        risk.counts[name] = count(index, user, settings)
    return time.process_time() - started


def next_pass(risk: UsersAtRisk, users: dict[str, UserCtx]) -> tuple[float, int]:
    """CPU seconds of a pass after the index moved (what `UsersAtRisk.refresh_pass` does,
    without its pauses): whose count still stands, and the others counted again; and how
    many those were."""
    index, settings = risk.sync.index, risk.sync.settings
    started = time.process_time()
    touched = index.touched_since(min(c.ordinal for c in risk.counts.values()))
    recounted = 0
    for name, user in users.items():
        old = risk.counts[name]
        if still_exact(old, user, settings, index, touched):
            old.ordinal = index.ordinal
        else:
            risk.counts[name] = count(index, user, settings)
            recounted += 1
    return time.process_time() - started, recounted


def request_ms(risk: UsersAtRisk, activity: Activity, query: Query, rounds: int = 20) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(rounds):
        started = time.process_time()
        size = len(orjson.dumps(users_page(risk, activity, query)))
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--districts", type=int, default=20)
    parser.add_argument("--centers", type=int, default=10)
    parser.add_argument("--areas", type=int, default=100)
    parser.add_argument("--households", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    shape = Shape(args.districts, args.centers, args.areas, args.households, 4, 4)
    index, users, build_s = build(shape)
    settings = AppSettings.from_doc(SETTINGS)
    risk = UsersAtRisk(FakeSync(index, settings), None, 60.0)  # type: ignore[arg-type]
    risk.users = users
    risk.warn_limit = 10_000
    activity = Activity(86400)
    for i, name in enumerate(users):
        if i % 3 == 0:
            activity.saw(name, "offline_changes", error=i % 9 == 0, refused=i % 27 == 0)

    rss = rss_mb()
    first = count_all(risk, users)
    kept_mb = rss_mb() - rss
    risk.refreshed_at = time.time()
    totals = [c.total for c in risk.counts.values()]
    results: dict[str, Any] = {
        "users": len(users),
        "docs": len(index.entries),
        "build_s": build_s,
        "pass_cpu_s": first,
        "per_user_ms": first / len(users) * 1000,
        "pass_wall_s": first / BUDGET,
        "docs_per_user_median": statistics.median(totals),
        "docs_per_user_max": max(totals),
        "kept_rss_mb": kept_mb,
    }
    for label, query in (
        ("all_by_docs", Query(limit=5000)),
        ("warning_only", Query(warning=True)),
        ("page_by_name", Query(sort="name", descending=False, limit=100, skip=10_000)),
    ):
        ms, size = request_ms(risk, activity, query)
        results[f"{label}_ms"] = ms
        results[f"{label}_bytes"] = size
    # One doc changes, the index moves on, and the next pass recounts whom it concerns.
    index.apply({"_id": "bench-report", "_rev": "1-x", "type": "data_record", "form": "visit",
                 "fields": {"patient_uuid": "d0-hc0-a0-h0-p0"},
                 "contact": {"_id": "d0-hc0-a0-chw"}})  # fmt: skip
    results["after_report_cpu_s"], results["after_report_recounted"] = next_pass(risk, users)
    index.apply({"_id": "bench-new", "_rev": "1-x", "type": "person", "parent": {"_id": "d0-hc0-a0"}})
    results["after_person_cpu_s"], results["after_person_recounted"] = next_pass(risk, users)
    for name, user in list(users.items())[:: max(1, len(users) // 200)]:  # the counts kept are exact
        assert risk.counts[name].by_kind == count(index, user, settings).by_kind, name
    lines = [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in results.items()]
    print("\n".join(lines))
    if args.write:
        command = "python -m bench.users_at_risk " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "write"
        )
        write_section(
            "Users at risk (GET /_couchgate/users) at 20,000 users",
            f"`{command} --write` (in-process, no backend; CPU seconds of the process).\n\n"
            f"{results['users']} offline users over {results['docs']} docs. Counting everyone once "
            f"(what the background task does, a user at a time) took {results['pass_cpu_s']:.1f} s of CPU "
            f"({results['per_user_ms']:.2f} ms a user); at its budget of a quarter of a core a pass takes "
            f"about {results['pass_wall_s']:.0f} s, so a count is at most that plus "
            "COUCHGATE_USERS_REFRESH_INTERVAL old while the database changes. A pass after a write "
            "recounts only the users it concerns: after a report in one CHW area "
            f"{results['after_report_recounted']} users were recounted ({results['after_report_cpu_s']:.2f} s "
            "of CPU for the pass, deciding for everyone whose count still stands included), after a new "
            f"person in one area {results['after_person_recounted']} ({results['after_person_cpu_s']:.2f} s); "
            "before, any write made the next pass recount everyone. "
            "A request costs only filtering, sorting and encoding what is kept: "
            f"{results['all_by_docs_ms']:.0f} ms for all users sorted by docs (a page of 5000, "
            f"{results['all_by_docs_bytes'] / 1e6:.1f} MB), {results['warning_only_ms']:.0f} ms for "
            f"`?warning=true`, {results['page_by_name_ms']:.0f} ms for a page of 100 by name. Computing "
            "the counts per request instead would cost the whole pass on every request. Not measured "
            "here: the first pass's read of the `_users` database (paged by 1000); later passes read "
            "only its changes.\n\n"
            "```\n" + "\n".join(lines) + "\n```\n",
        )


if __name__ == "__main__":
    main()
