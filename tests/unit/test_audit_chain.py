"""The audit hash chain detects edited, deleted and reordered entries."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy.audit.chain import GENESIS, entry_hash, verify


def chain(n: int, writer: str = "w1") -> list[dict[str, Any]]:
    entries, prev = [], GENESIS
    for seq in range(1, n + 1):
        entry: dict[str, Any] = {
            "writer": writer,
            "seq": seq,
            "prev_hash": prev,
            "action": "create",
            "doc_id": f"d{seq}",
        }
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def test_intact_chains_verify() -> None:
    assert verify(chain(5) + chain(3, "w2")) == []
    assert verify([{**e, "_rev": "9-x"} for e in chain(3)]) == []  # CouchDB's own fields don't count


@given(st.integers(min_value=1, max_value=8), st.data())
def test_any_edit_is_found(n: int, data: st.DataObject) -> None:
    entries = chain(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    entries[i]["doc_id"] = "tampered"
    assert [(b.seq, b.problem) for b in verify(entries)] == [(i + 1, "edited")]


def test_deleted_entry_is_a_gap() -> None:
    entries = chain(5)
    del entries[2]
    assert [(b.seq, b.problem) for b in verify(entries)] == [(3, "missing")]
    assert [(b.seq, b.problem) for b in verify(chain(5)[1:])] == [(1, "missing")]


def test_rehashed_forgery_breaks_the_link() -> None:
    entries = chain(4)
    entries[1]["doc_id"] = "forged"
    entries[1]["hash"] = entry_hash(entries[1])  # the forger recomputes its hash...
    assert [(b.seq, b.problem) for b in verify(entries)] == [(3, "relinked")]  # ...but not the next link


def test_retention_cut_is_expected() -> None:
    assert verify(chain(6)[3:], removed_up_to={"w1": 3}) == []
    assert [(b.seq, b.problem) for b in verify(chain(6)[4:], removed_up_to={"w1": 3})] == [(4, "missing")]
