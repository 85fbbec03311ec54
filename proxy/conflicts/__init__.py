"""Finding, explaining and resolving CouchDB conflicts, UUID collisions included."""
