"""A deterministic CHT-shaped demo data set: `make run`, tests and benchmarks use it."""
