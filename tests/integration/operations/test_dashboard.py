"""deploy/grafana/couchgate.json asks only for metrics and labels couchgate exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ops_support import Scrape, scrape

from proxy.devserver.backend import PouchServer

from support import Gateway

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "couchgate.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "unknown": ("",)}  # fmt: skip
SELECTOR = re.compile(r"(couchgate_[a-z_]+)\{([^}]*)\}")


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(found) > 20
    return found


def exported_names(exported: Scrape) -> dict[str, set[str]]:
    """Every sample name a scrape's families stand for, with the family's label names."""
    names: dict[str, set[str]] = {}
    for family in exported.families.values():
        labels = {k for s in family.samples for k in s.labels}
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def unknown(exprs: list[str], names: dict[str, set[str]]) -> list[str]:
    problems = []
    for expr in exprs:
        problems += [f"{n} is not exported" for n in re.findall(r"couchgate_[a-z_]+", expr) if n not in names]
        for name, selector in SELECTOR.findall(expr):
            for label in re.findall(r"(\w+)\s*=~?", selector):
                if label != "job" and names.get(name) and label not in names[name]:
                    problems.append(f"{name} has no label {label}")
    return problems


async def test_every_metric_and_label_on_the_dashboard_exists(gw: Gateway, backend: PouchServer) -> None:
    await scrape(gw, backend)  # counted: the next scrape has labelled request samples
    names = exported_names(await scrape(gw, backend))
    assert unknown(expressions(), names) == []
    # The check sees a name or a label couchgate does not export.
    wrong = ["rate(couchgate_made_up_total[5m])", 'sum(couchgate_requests_total{job=~"$job", colour="red"})']
    assert unknown(wrong, names) == [
        "couchgate_made_up_total is not exported",
        "couchgate_requests_total has no label colour",
    ]
