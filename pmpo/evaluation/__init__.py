"""Evaluation: the held-out judge (loss, option accuracy, generation accuracy), answer matching, intervals."""
