"""An offline user's own `_users` doc: readable (see `routes`), writable only to change
the password.

That doc holds the roles, facility and contact that decide what the user may replicate.
pouchdb-server lets users change their own roles, and token callers write with the service
account, so no user body is forwarded: couchgate writes the stored doc with only the new
password applied, and refuses a body that would change anything else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.audit.recorder import Recorder
from proxy.couch.client import quote_id
from proxy.errors import Forbidden, json_response
from proxy.keys import COUCH, SETTINGS
from proxy.params import read_json

# Set by CouchDB from `password` on write; a client may send them back unchanged or not at all.
PASSWORD_FIELDS = frozenset(
    {"password", "derived_key", "salt", "iterations", "password_scheme", "pbkdf2_prf", "password_sha"}
)
ONLY_PASSWORD = "offline users may only change the password in their own user document"


def _rest(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PASSWORD_FIELDS and k not in {"_id", "_rev"}}


async def change_password(request: web.Request, path: CouchPath, own_id: str) -> web.Response:
    body = await read_json(request, request.app[SETTINGS].max_user_doc_bytes)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("password"), str)
        or not body["password"]
        or body.get("_id", own_id) != own_id
    ):
        raise Forbidden(ONLY_PASSWORD)
    couch = request.app[COUCH]
    target = f"/_users/{quote_id(own_id)}"
    stored = await couch.json("GET", target)
    if not stored.ok or not isinstance(stored.body, dict) or _rest(body) != _rest(stored.body):
        raise Forbidden(ONLY_PASSWORD)
    # The stored doc with the new password; the client's `_rev` keeps CouchDB's conflict check.
    new_doc = {**_rest(stored.body), "_id": own_id, "password": body["password"]}
    if "_rev" in body:
        new_doc["_rev"] = body["_rev"]
    audit = Recorder.of(request)
    await audit.intend_docs(path.db, [new_doc])
    result = await couch.json("PUT", target, body=new_doc)
    audit.answered(
        "update", result.status, result.body, path.db, new_doc, doc_id=own_id, doc_type="user",
        rev_before=stored.body.get("_rev"),
    )  # fmt: skip
    return json_response(result.body, status=result.status)
