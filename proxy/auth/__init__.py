"""Who the caller is: basic, CouchDB cookie session or JWT bearer -> a `Principal`.

Authentication only; what a principal may do is decided in `proxy.access`.
"""
