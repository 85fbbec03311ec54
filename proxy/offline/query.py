"""The query parameters of the endpoints offline users reach, parsed strictly.

couchgate forwards only what it parsed and judged: each endpoint names the parameters it
knows with their type, a request's other parameters are dropped (never forwarded), a
known one given twice or with a value of the wrong shape is refused (400), and what goes
upstream is rebuilt from the parsed values (`encode`). So the backend can never read a
request differently from the rules (`open_revs[]=`, `latest=1`, `docs=` overriding a
body, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from multidict import MultiMapping

from proxy.errors import BadRequest
from proxy.params import nonneg_int

REV = re.compile(r"^[0-9]{1,10}-[0-9a-zA-Z]{1,64}$")
MAX_REVS = 1000

Parser = Callable[[str, str], Any]


def boolean(name: str, raw: str) -> bool:
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return raw == "true"


def integer(name: str, raw: str) -> int:
    value = nonneg_int(raw, name)
    if value is None:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def rev(name: str, raw: str) -> str:
    if not REV.match(raw):
        raise BadRequest("Invalid rev format")
    return raw


def text(name: str, raw: str) -> str:
    return raw


def json_value(name: str, raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{name} must be JSON") from exc


def revs(name: str, raw: str) -> list[str] | str:
    """`open_revs`: `all`, or a JSON array of revisions."""
    if raw == "all":
        return "all"
    value = json_value(name, raw)
    if (
        not isinstance(value, list)
        or len(value) > MAX_REVS
        or not all(isinstance(r, str) and REV.match(r) for r in value)
    ):
        raise BadRequest(f"{name} must be `all` or a JSON array of revisions")
    return value


def rev_list(name: str, raw: str) -> list[str]:
    """`atts_since`: a JSON array of revisions."""
    value = revs(name, raw)
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a JSON array of revisions")
    return value


# What each offline endpoint reads; nothing else reaches CouchDB.
DOC = {
    "rev": rev, "revs": boolean, "revs_info": boolean, "open_revs": revs, "latest": boolean,
    "conflicts": boolean, "deleted_conflicts": boolean, "attachments": boolean,
    "att_encoding_info": boolean, "atts_since": rev_list, "meta": boolean,
}  # fmt: skip
ATTACHMENT = {"rev": rev}
BULK_GET = {"revs": boolean, "latest": boolean, "attachments": boolean, "att_encoding_info": boolean}
ALL_DOCS = {
    "include_docs": boolean, "conflicts": boolean, "attachments": boolean, "att_encoding_info": boolean,
    "update_seq": boolean, "descending": boolean, "inclusive_end": boolean, "skip": integer,
    "limit": integer, "keys": json_value, "key": json_value, "startkey": json_value,
    "start_key": json_value, "endkey": json_value, "end_key": json_value,
}  # fmt: skip
CHANGES = {
    "since": text, "limit": integer, "style": text, "include_docs": boolean, "conflicts": boolean,
    "attachments": boolean, "descending": boolean, "feed": text, "heartbeat": text, "timeout": integer,
    "filter": text, "doc_ids": text, "seq_interval": integer,
}  # fmt: skip
WRITE = {"rev": rev, "new_edits": boolean}
LOCAL = {"rev": rev}


def parse(query: MultiMapping[str], spec: Mapping[str, Parser]) -> dict[str, Any]:
    """The known parameters of `query`, typed; unknown ones are left out."""
    found: dict[str, Any] = {}
    for name in set(query.keys()):
        parser = spec.get(name)
        if parser is None:
            continue
        values = query.getall(name)
        if len(values) > 1:
            raise BadRequest(f"{name} may be given only once")
        found[name] = parser(name, values[0])
    return found


def encode(params: Mapping[str, Any]) -> dict[str, str]:
    """Parsed parameters as CouchDB reads them (strings as they are, lists as JSON)."""
    out: dict[str, str] = {}
    for name, value in params.items():
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int | str):
            out[name] = str(value)
        else:
            out[name] = orjson.dumps(value).decode()
    return out
