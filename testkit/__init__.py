"""Real servers and a tiny model for tests and benchmarks: one launcher each, shared by both."""
