"""The import policy's rules 1 and 3 (proxy/importer/policy.py), as a table: what happens to
an allowed doc, by `on_conflict` and whether its id is taken. Rule 2 (offline users' write
rules) is the access rules' own, tested with them and through the importer
(tests/integration/importer/test_import_access.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.importer.docs import Prepared, branch_rev
from proxy.importer.policy import Mode, Policy, placement, unchanged

DOC = {"_id": "a", "v": 2}
STORED = {"_id": "a", "_rev": "3-abc", "v": 1}


@pytest.mark.parametrize(
    ("mode", "current", "how", "body"),
    [
        ("skip", None, "created", DOC),
        ("overwrite", None, "created", DOC),
        ("keep_both", None, "created", DOC),
        ("skip", STORED, "skipped", STORED),
        ("overwrite", STORED, "updated", {**DOC, "_rev": "3-abc"}),
        ("keep_both", STORED, "branch", {**DOC, "_rev": branch_rev(DOC)}),
    ],
)
def test_placement(mode: Mode, current: dict[str, Any] | None, how: str, body: dict[str, Any]) -> None:
    assert placement(mode, Prepared(0, dict(DOC)), current) == (how, body)


def test_unchanged_only_for_what_the_caller_sees() -> None:
    same = Prepared(0, {"_id": "a", "v": 1})
    assert unchanged(same, STORED, {"a"})
    assert not unchanged(same, STORED, set())  # a stored doc the caller may not see
    assert not unchanged(Prepared(0, dict(DOC)), STORED, {"a"})
    assert not unchanged(same, None, {"a"})


async def test_everyone_but_offline_users_sees_every_stored_doc_and_is_judged_by_couchdb() -> None:
    policy = Policy()
    assert await policy.visible({"a": STORED, "b": None}, {"b"}) == ({"a"}, set())
    assert await policy.refusals([Prepared(0, dict(DOC))], {"a": STORED}, set()) == {}
    assert not policy.in_order and not policy.reads_every_id
