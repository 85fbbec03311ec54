"""The audit log: who wrote what, when, through which request."""
