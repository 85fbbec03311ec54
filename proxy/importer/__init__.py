"""`POST /{db}/_couchgate/import`: a conflict-safe bulk import that answers for every doc."""
