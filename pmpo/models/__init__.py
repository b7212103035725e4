"""Models: loading (bundled, hub, local), generation and greedy decoding, and the work counters."""
