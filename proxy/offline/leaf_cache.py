"""What the access rules read of revisions, kept by (doc id, rev): revisions never change."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.couch.client import CouchClient
from proxy.couch.docs import Docs

# The fields of a doc the access rules read (proxy.access.kinds / read).
TOP = (
    "_id",
    "_rev",
    "_deleted",
    "type",
    "contact_type",
    "parent",
    "patient_id",
    "place_id",
    "contact",
    "user",
    "owner",
)
IN_FIELDS = ("patient_id", "patient_uuid", "place_id", "needs_signoff", "private")
KEPT = 50_000


def skeleton(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What the rules read of a revision (anything more, a bare tombstone has not)."""
    kept = {k: doc[k] for k in TOP if k in doc}
    fields = doc.get("fields")
    if isinstance(fields, Mapping):
        kept["fields"] = {k: fields[k] for k in IN_FIELDS if k in fields}
    if doc.get("_deleted") is True and len(doc.keys() - {"_id", "_rev", "_deleted", "_revisions"}) > 0:
        kept["content"] = True  # a deleted revision with a body is judged, never served as bare
    return kept


class Revisions:
    """Skeletons of revisions by (doc id, rev), most recently used kept; None: the
    revision is gone from CouchDB (compacted), so it is never served."""

    def __init__(self, size: int = KEPT) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[str, str], dict[str, Any] | None] = OrderedDict()

    def get(self, key: tuple[str, str]) -> tuple[bool, dict[str, Any] | None]:
        if key not in self._kept:
            return False, None
        self._kept.move_to_end(key)
        return True, self._kept[key]

    def put(self, key: tuple[str, str], value: dict[str, Any] | None) -> None:
        self._kept[key] = value
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    async def fetch(self, couch: CouchClient, db_path: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Read the skeletons not kept yet, with one `_bulk_get` (`proxy.couch.docs`: a
        failed read raises, and nothing of it is kept)."""
        wanted = [p for p in dict.fromkeys(pairs) if p not in self._kept]
        if not wanted:
            return
        for pair, doc in (await Docs(couch, db_path).revisions(wanted)).items():
            self.put(pair, skeleton(doc) if doc is not None else None)
