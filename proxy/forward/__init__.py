"""Forwarding: what couchgate sends on to CouchDB for callers it lets through.

The relay (`relay`), the requests never forwarded as sent (`guard`), the token caller's
CouchDB rules (`acting`) and `/_session` (`session`).
"""
