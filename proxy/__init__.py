"""couchgate: a sync gateway between offline-first PouchDB clients and CouchDB."""

__version__ = "0.1.0"
