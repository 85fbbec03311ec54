"""Development helpers: the embedded CouchDB-compatible backend and `couchgate dev`."""
