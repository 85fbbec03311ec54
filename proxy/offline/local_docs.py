"""`_local` docs (replication checkpoints) of offline users, kept apart per user.

`_local/X` of user U is stored upstream as `_local/couchgate~<keyed hash of U>~X`, so no user can
read or overwrite another's checkpoint, and ids are rewritten back in every answer.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from proxy.couch.client import quote_id
from proxy.errors import BadRequest, MethodNotAllowed, json_response
from proxy.keys import COUCH, SETTINGS, SINCE_KEY
from proxy.offline import query
from proxy.params import read_json

LOCAL = "_local/"


def private_id(key: bytes, user: str, local_id: str) -> str:
    """The upstream id of a user's `_local` doc: keyed, so no one without couchgate's secret
    can name another user's (and `proxy.forward.guard` keeps every other caller away from them)."""
    digest = hmac.new(key, f"local\0{user}".encode(), hashlib.sha256).hexdigest()[:24]
    return f"{LOCAL}couchgate~{digest}~{local_id[len(LOCAL) :]}"


async def local_doc(request: web.Request, db_path: str, user: str, local_id: str) -> web.Response:
    couch = request.app[COUCH]
    upstream_id = private_id(request.app[SINCE_KEY], user, local_id)
    path = f"{db_path}/{quote_id(upstream_id)}"
    params = query.encode(query.parse(request.query, query.LOCAL))
    if request.method in {"GET", "HEAD"}:
        result = await couch.json("GET", path, params=params)
    elif request.method == "PUT":
        body = await read_json(request, request.app[SETTINGS].max_user_doc_bytes)
        if not isinstance(body, dict):
            raise BadRequest("Document must be a JSON object")
        body["_id"] = upstream_id
        result = await couch.json("PUT", path, body=body)
    elif request.method == "DELETE":
        result = await couch.json("DELETE", path, params=params)
    else:
        raise MethodNotAllowed("Only GET, HEAD, PUT and DELETE are allowed for _local documents.")
    body = result.body
    if isinstance(body, dict):
        for key in ("_id", "id"):
            if body.get(key) == upstream_id:
                body[key] = local_id
    return json_response(body, status=result.status)
