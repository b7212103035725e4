"""Scorers the loop tests inspect."""

from __future__ import annotations

from pmpo.scoring.loss import Scorer


class RecordingScorer(Scorer):
    """A scorer that remembers every prompt it was asked to score."""

    def __init__(self, lm):
        super().__init__(lm)
        self.prompts: list[str] = []

    def loss_matrix(self, prompts, examples):
        self.prompts.extend(prompts)
        return super().loss_matrix(prompts, examples)
