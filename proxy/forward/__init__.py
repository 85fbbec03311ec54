"""Forwarding: what couchgate sends on to CouchDB for the callers it lets through (online
users, token callers, admins; offline users are `proxy.offline`'s).

Its floors, top down (each imports only those below it; pyproject.toml):
- `serve`: a forwarded request, and a write recorded with CouchDB's answer; `session`:
  `/_session`;
- `guard`: requests never forwarded as sent; `acting`: whose credentials go upstream, and
  CouchDB's rules applied for a token caller (with the check its body must pass);
- `relay`: the streaming relay, given what it needs as values;
- `limits`: request bodies within their limits.
"""
