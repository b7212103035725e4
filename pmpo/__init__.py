"""PMPO (public API assembled once the modules land)."""
