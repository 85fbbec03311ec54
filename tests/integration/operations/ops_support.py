"""Reading couchgate's metrics and admin routes from the operations tests."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy.devserver.backend import PouchServer

from support import Gateway, basic


def admin(backend: PouchServer) -> str:
    return basic(backend.admin_user, backend.admin_password)


class Scrape:
    """One scrape of /_couchgate/metrics: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(v for have, v in self.samples.get(name, []) if labels.items() <= have.items())

    def names(self) -> set[str]:
        return set(self.samples)


async def scrape(gw: Gateway, backend: PouchServer) -> Scrape:
    status, body, headers = await gw.call("GET", "/_couchgate/metrics", auth=admin(backend))
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return Scrape(body.decode() if isinstance(body, bytes) else str(body))


async def admin_get(gw: Gateway, backend: PouchServer, path: str) -> Any:
    status, body, _ = await gw.call("GET", path, auth=admin(backend))
    assert status == 200, body
    return body
