"""The operators' console: a small web app served by couchgate (no build step)."""
