"""The access rules, pure (no I/O): paths, CouchDB's `_security` for token callers, document
kinds, the contact tree, the read rules (`read`), the write rules (`write`), the batch
overlay (`batch`), the scope index and its history. docs/design.md has the rules."""
