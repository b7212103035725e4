"""Scoring: the loss of reference outputs under a prompt (batched, with prefix reuse), and racing."""
