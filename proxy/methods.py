"""405 where CouchDB or couchgate has no such method: methods CouchDB does not know
(`TRACE`, `PATCH`, ...) and couchgate's own paths asked with a method they do not take
(otherwise the catch-all route would forward them to CouchDB, which answers 404)."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import MethodNotAllowed

COUCHDB_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "COPY", "OPTIONS")
CATCH_ALL = "couchdb_proxy"


def refuse_unknown_method(request: web.Request) -> None:
    if request.method not in COUCHDB_METHODS:
        raise MethodNotAllowed(
            f"{request.method} is not a method CouchDB answers", headers={"Allow": ", ".join(COUCHDB_METHODS)}
        )


async def refuse_wrong_method(request: web.Request) -> None:
    """In the catch-all route: 405 for an unknown method, or for a path of couchgate's own
    routes asked with another method (with the methods it takes in `Allow`)."""
    refuse_unknown_method(request)
    for resource in request.app.router.resources():
        if resource.name == CATCH_ALL:
            continue
        match, allowed = await resource.resolve(request)
        if match is None and allowed:
            raise MethodNotAllowed(
                f"{request.method} is not allowed here", headers={"Allow": ", ".join(sorted(allowed))}
            )
