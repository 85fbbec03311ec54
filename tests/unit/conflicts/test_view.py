"""The conflicts view's map function, run by node as CouchDB's JavaScript engine would
(pouchdb-server never passes `_deleted_conflicts` to views, CouchDB does)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from proxy.conflicts.store import DESIGN

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def emitted(doc: dict[str, Any]) -> list[Any]:
    source = DESIGN["views"]["conflicts"]["map"]  # type: ignore[index]
    script = f"var out = []; function emit(k, v) {{ out.push([k, v]); }}\n" \
             f"({source})({json.dumps(doc)}); console.log(JSON.stringify(out));"  # fmt: skip
    done = subprocess.run(["node", "-e", script], capture_output=True, check=True, timeout=30)
    return json.loads(done.stdout)


def test_only_docs_with_live_conflicts_are_listed() -> None:
    doc = {"_id": "a", "_rev": "3-w", "type": "person"}
    assert emitted(doc) == []
    # What a resolution leaves behind: its tombstones, seen by the view as deleted revs only.
    assert emitted({**doc, "_deleted_conflicts": ["3-t"]}) == []
    assert emitted({**doc, "_conflicts": []}) == []
    listed = {**doc, "_conflicts": ["2-c"], "_deleted_conflicts": ["2-d"]}
    assert emitted(listed) == [
        ["a", {"rev": "3-w", "type": "person", "conflicts": ["2-c"], "deleted": ["2-d"]}]
    ]
    assert emitted({"_id": "b", "_rev": "2-b", "_conflicts": ["2-a"]})[0][1]["type"] is None
