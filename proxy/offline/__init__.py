"""Serving offline users: the replication endpoints, answered from the scope index with the
service account after the rules of `proxy.access` are applied."""
