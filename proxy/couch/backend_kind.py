"""Which kind of server couchgate talks to: Apache CouchDB, or a CouchDB-compatible one
(pouchdb-server, the embedded development and test backend).

Some requests that CouchDB answers well take a stock pouchdb-server process down (see
`proxy.forward.guard`); they are refused or rewritten unless the backend says it is CouchDB. Its
welcome (`GET /`) tells: CouchDB's has a `couchdb` key. Fail closed: until the welcome
has been read, the backend is taken for the fragile kind.
"""

from __future__ import annotations

from proxy.couch.client import CouchClient
from proxy.errors import UpstreamError


class BackendKind:
    def __init__(self, couch: CouchClient) -> None:
        self.couch = couch
        self._couchdb: bool | None = None

    async def is_couchdb(self) -> bool:
        if self._couchdb is None:
            try:
                result = await self.couch.json("GET", "/")
            except UpstreamError:
                return False
            if not result.ok:
                return False
            self._couchdb = isinstance(result.body, dict) and "couchdb" in result.body
        return self._couchdb
