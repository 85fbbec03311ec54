"""The decoded, normalised form of a request path, on which every rule is decided.

`%2F`, `%5F`, doubled slashes and trailing slashes are folded here once, and requests are
forwarded upstream in the canonical encoding built from the same parts, so what a rule
saw is exactly what CouchDB receives.

Segments are decoded as CouchDB decodes them (mochiweb's `unquote`): a raw `+` is a space,
`%2B` a plus. So `+` is always sent escaped: left raw, CouchDB would read a space, and a
doc, attachment or database would be written under a name nobody asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

# RFC 3986 pchar sub-delims that CouchDB reads literally: everything but `+`.
_PCHAR_SAFE = "-._~!$&'()*,;=:@"


class BadPath(ValueError):
    """The path cannot be decoded."""


@dataclass(frozen=True)
class CouchPath:
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, raw_path: str) -> CouchPath:
        parts: list[str] = []
        for raw in raw_path.split("?", 1)[0].split("/"):
            if not raw:
                continue
            try:
                part = decode_segment(raw)
            except UnicodeDecodeError as exc:
                raise BadPath("path is not valid UTF-8") from exc
            if part in {".", ".."} or "\x00" in part:
                raise BadPath("path contains a forbidden segment")
            parts.append(part)
        return cls(_join_doc_ids(parts))

    @property
    def db(self) -> str | None:
        return self.segments[0] if self.segments else None

    @property
    def is_server(self) -> bool:
        """A server-level path such as `/_session` or `/_all_dbs` (no database)."""
        return not self.segments or (
            self.segments[0].startswith("_")
            and self.segments[0]
            not in {
                "_users",
                "_replicator",
                "_global_changes",
            }
        )

    @property
    def doc_id(self) -> str | None:
        """The document the path is about, `_design/x` and `_local/x` included."""
        if len(self.segments) < 2:
            return None
        second = self.segments[1]
        if second.startswith("_") and not second.startswith(("_design/", "_local/")):
            return None
        return second

    @property
    def rest(self) -> tuple[str, ...]:
        """What follows the doc (attachment name parts, or a view path)."""
        return self.segments[2:]

    def encoded(self) -> str:
        return "/" + "/".join(_encode(part) for part in self.segments)


def decode_segment(raw: str) -> str:
    """One raw path segment (or a `Destination` header's id) as CouchDB reads it."""
    return unquote_plus(raw, errors="strict")


def _join_doc_ids(parts: list[str]) -> tuple[str, ...]:
    # `/db/_design/x/...` and `/db/_local/x` name one doc id whose raw form holds a slash;
    # `/db/_design%2Fx` decodes to the same single part.
    if len(parts) >= 3 and parts[1] in {"_design", "_local"}:
        return (parts[0], f"{parts[1]}/{parts[2]}", *parts[3:])
    return tuple(parts)


def _encode(part: str) -> str:
    for prefix in ("_design/", "_local/"):
        if part.startswith(prefix):
            return prefix + quote(part[len(prefix) :], safe=_PCHAR_SAFE)
    return quote(part, safe=_PCHAR_SAFE)
