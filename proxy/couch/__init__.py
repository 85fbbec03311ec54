"""The only code that talks to CouchDB."""
