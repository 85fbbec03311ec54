"""Compact storage for the scope index (pure, no I/O): strings interned into dense
numbers, revisions packed into fixed-width columns. docs/design.md ("Index
representation") says why: a Python object per doc costs ~750 bytes at a million docs,
these columns about a quarter of that, and they save and load as raw arrays.
"""

from __future__ import annotations

from array import array
from typing import Any

CACHED_STRINGS = 1 << 16


class Strings:
    """Strings interned into dense numbers (0, 1, ...), never forgotten: doc ids and
    replication keys share one numbering, so a contact's doc and its key are one number.
    The strings sit end to end in one buffer (UTF-8), found through an open-addressing
    table of numbers (4 bytes a slot, at most half full): a str object, a list slot, a
    dict entry and an int object would cost ~150 bytes a string, these ~45."""

    __slots__ = ("_absent", "_blob", "_decoded", "_ends", "_found", "_mask", "_table")

    def __init__(self, blob: bytes | bytearray = b"", ends: array[int] | None = None) -> None:
        self._blob = bytearray(blob)
        self._ends = ends if ends is not None else array("q")  # where each string ends
        # The strings last read and looked up, so the rules' hot ones cost a dict lookup
        # (bounded: emptied when full).
        self._decoded: dict[int, str] = {}
        self._found: dict[str, int] = {}
        # And the ones last looked up and not held (a write's new ids are looked up several
        # times before they are added); `add` takes a string out of it.
        self._absent: dict[str, None] = {}
        self._rebuild(max(len(self._ends) * 2, 1024))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, n: int) -> str:
        s = self._decoded.get(n)
        if s is None:
            ends = self._ends
            s = self._blob[ends[n - 1] if n else 0 : ends[n]].decode("utf-8", "surrogatepass")
            if len(self._decoded) >= CACHED_STRINGS:
                self._decoded.clear()
            self._decoded[n] = s
            if len(self._found) >= CACHED_STRINGS:
                self._found.clear()
            self._found[s] = n  # a string read is most often looked up next (a key, a parent)
        return s

    def raw(self) -> tuple[bytearray, array[int]]:
        """The buffer and the end offsets (what a snapshot keeps)."""
        return self._blob, self._ends

    def _rebuild(self, minimum: int) -> None:
        size = 1024
        while size < minimum:
            size *= 2
        table = array("i", bytes(4 * size))
        mask, blob, start = size - 1, self._blob, 0
        for n, end in enumerate(self._ends, start=1):
            slot = hash(blob[start:end].decode("utf-8", "surrogatepass")) & mask
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = n
            start = end
        self._table, self._mask = table, mask

    def _slot(self, s: str, raw: bytes) -> tuple[int, int]:
        """(number + 1, or 0 when absent; the table slot where it is or would go)."""
        table, mask, blob, ends = self._table, self._mask, self._blob, self._ends
        slot, size = hash(s) & mask, len(raw)
        while True:
            n = table[slot]
            if not n:
                return 0, slot
            end = ends[n - 1]
            start = ends[n - 2] if n > 1 else 0
            if end - start == size and blob[start:end] == raw:
                return n, slot
            slot = (slot + 1) & mask

    def find(self, s: str) -> int:
        """The string's number, or -1."""
        n = self._found.get(s)
        if n is None:
            if s in self._absent:
                return -1
            n = self._slot(s, s.encode("utf-8", "surrogatepass"))[0] - 1
            cache: dict[str, Any] = self._found if n >= 0 else self._absent
            if len(cache) >= CACHED_STRINGS:
                cache.clear()
            cache[s] = n if n >= 0 else None
        return n

    def add(self, s: str) -> int:
        """The string's number, given one if it had none."""
        raw = s.encode("utf-8", "surrogatepass")
        n, slot = self._slot(s, raw)
        if n:
            return n - 1
        self._absent.pop(s, None)
        self._blob += raw
        self._ends.append(len(self._blob))
        self._table[slot] = len(self._ends)
        if 2 * len(self._ends) > len(self._table):
            self._rebuild(4 * len(self._ends))
        return len(self._ends) - 1


HEX = frozenset("0123456789abcdef")


def pack_rev(rev: str) -> tuple[int, bytes] | None:
    """CouchDB's `N-<32 lowercase hex>` as (N, 16 bytes); None for any other shape (kept
    as it is, aside)."""
    dash = rev.find("-")
    if dash < 1 or len(rev) - dash != 33 or not rev[:dash].isdigit() or rev[0] == "0":
        return None
    digest = rev[dash + 1 :]
    if not HEX.issuperset(digest) or not rev[:dash].isascii():
        return None
    generation = int(rev[:dash])
    return (generation, bytes.fromhex(digest)) if generation < 2**32 else None


def unpack_rev(generation: int, digest: bytes | bytearray) -> str:
    return f"{generation}-{digest.hex()}"


def grow(column: array[Any], size: int, fill: int) -> None:
    """Extend `column` with `fill` up to `size` items."""
    missing = size - len(column)
    if missing > 0:
        column.extend(array(column.typecode, [fill]) * missing)
