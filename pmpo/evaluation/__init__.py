"""Evaluation: the held-out judge (loss, option accuracy, generation accuracy) and its intervals."""
