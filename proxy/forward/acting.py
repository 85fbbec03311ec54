"""Whose credentials a forward carries upstream (`credentials_for`), and the CouchDB rules
couchgate applies itself where it acts for the caller.

Token callers have no CouchDB credentials: couchgate acts for them as its service account.
Before it does, it makes the checks CouchDB would have made for that user
(`proxy.access.couch_security`, pure). Most need only the path and the database's
`_security`; a few need the request body (the `_id`s of `POST /db` and `_bulk_docs`, a
user's own `_users` doc): `credentials_for` then answers a `BodyCheck` beside the
credentials, which the caller hands to `relay.forward`; the forward reads the body
(bounded) and passes it through the check before anything is sent upstream. What is sent
is then the body as the check parsed it, written again (duplicate keys and other
ambiguities of the client's bytes never reach CouchDB, which could read them differently).

Known limitation: upstream `validate_doc_update` functions run with the service
account's userCtx (an admin) for these callers; see `couch_security`. CouchDB's proxy
authentication (`X-Auth-CouchDB-*` headers) would let CouchDB see the real user instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import orjson
from aiohttp import web

from proxy.access import couch_security
from proxy.access.couch_security import Verdict
from proxy.access.paths import CouchPath
from proxy.auth.principal import Principal
from proxy.couch.client import quote_id
from proxy.errors import (
    BadRequest,
    CouchgateError,
    Forbidden,
    IllegalDatabaseName,
    NotFound,
    UpstreamError,
    dumps,
)
from proxy.forward.relay import BodyCheck
from proxy.keys import COUCH, SECURITY


class Upstream(NamedTuple):
    """How a request goes to CouchDB: with these credentials, its body first through `check`
    when CouchDB's answer for this caller depends on it (both are `relay.forward`'s)."""

    credentials: dict[str, str]
    check: BodyCheck | None = None


async def credentials_for(request: web.Request, principal: Principal, path: CouchPath) -> Upstream:
    """The upstream credentials of this request, or an error if CouchDB's rules deny it."""
    if path.segments[:1] == ("_session",):
        # CouchDB's own session protocol: the credential couchgate read (and only it: with a
        # Basic credential and another user's cookie, CouchDB would name the cookie's user
        # where couchgate acts for the Basic one; a token caller's logout would end the
        # cookie's session too). An anonymous caller's cookie goes as sent (CouchDB answers
        # an expired one); an `Authorization` couchgate did not read as Basic credentials is
        # none (CouchDB 3.4 answers `Basic %%%` with a 500 `badarg`).
        if principal.method in ("basic", "cookie"):
            return Upstream(dict(principal.upstream_headers))
        if principal.authenticated:
            return Upstream({})  # a token caller: CouchDB cannot know the token
        return Upstream({k: v for k, v in request.headers.items() if k.lower() == "cookie"})
    if not principal.authenticated:
        return Upstream({})  # anonymous: whatever the client sent was no credential couchgate could read
    if principal.upstream_headers:
        check = None
        if path.db == "_users" and not principal.is_admin:
            # Not every backend keeps CouchDB's `_users` rules (pouchdb-server lets users
            # change their own roles): couchgate holds these callers to them as it does
            # token callers, and CouchDB then checks again with their own credentials.
            check = await authorize(request, principal, path)
        return Upstream(dict(principal.upstream_headers), check)
    # A token caller: couchgate applies CouchDB's rules, then acts as the service account.
    check = await authorize(request, principal, path)
    return Upstream({"Authorization": request.app[COUCH].service_auth}, check)


def refusal(verdict: Verdict) -> CouchgateError:
    if verdict.status == 404:
        return NotFound(verdict.reason)
    if verdict.status == 400:
        return IllegalDatabaseName(verdict.reason)
    return Forbidden(verdict.reason)


async def authorize(request: web.Request, principal: Principal, path: CouchPath) -> BodyCheck | None:
    """Raise unless CouchDB would let this token caller do this; a check for the body, if
    the answer depends on it."""
    destination = request.headers.get("Destination") if request.method == "COPY" else None
    args = (request.method, path, principal.name, principal.roles)
    verdict = couch_security.decide(*args, destination=destination)
    if verdict.needs_security and path.db is not None:
        security = await request.app[SECURITY].get(path.db)
        verdict = couch_security.decide(*args, security, destination=destination)
    if not verdict.allowed:
        raise refusal(verdict)
    if verdict.body_check == "design_ids":
        bulk = len(path.segments) > 1  # `/db/_bulk_docs`, else `POST /db`
        return lambda body: _no_design_docs(body, bulk=bulk)
    if verdict.body_check == "user_doc":
        return lambda body: _own_user_doc(request, principal, path, body)
    return None


def parse(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid UTF-8 JSON") from exc


async def _no_design_docs(body: bytes, *, bulk: bool) -> bytes:
    parsed = parse(body)
    if couch_security.design_ids_in(parsed, bulk=bulk):
        raise Forbidden(couch_security.NOT_DB_ADMIN)
    return dumps(parsed)


async def _own_user_doc(request: web.Request, principal: Principal, path: CouchPath, body: bytes) -> bytes:
    doc_id = path.doc_id or ""
    if request.query.get("new_edits", "true").lower() != "true":
        raise Forbidden("Only admins may write user documents with new_edits=false.")
    new = parse(body)
    stored = await _stored_user_doc(request, doc_id)
    problem = couch_security.user_doc_problem(new, stored, principal.name or "", doc_id)
    if problem is not None:
        raise Forbidden(problem)
    return dumps(new)


async def _stored_user_doc(request: web.Request, doc_id: str) -> Mapping[str, object] | None:
    result = await request.app[COUCH].json("GET", f"/_users/{quote_id(doc_id)}")
    if result.status == 404:
        return None
    if not result.ok or not isinstance(result.body, dict):
        # Fail closed: without the stored roles, a roles change could not be noticed.
        raise UpstreamError("couchgate could not read the stored user document")
    return result.body
