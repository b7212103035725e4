"""Typed results of a PMPO run: every candidate scored, the incumbent history, the best prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pmpo.models.usage import Cost, total

Origin = Literal["initial", "rewrite", "segment_removal", "demonstrations"]
# Why the loop ended: it ran every iteration, `patience` stopped it, or its `budget` was spent.
StopReason = Literal["iterations", "patience", "budget"]


@dataclass(frozen=True)
class Candidate:
    """One scored prompt and how it was made."""

    id: str  # content hash of the prompt text: the same text is the same candidate
    parent_id: str | None
    iteration: int  # 0 for the initial prompt
    origin: Origin
    prompt: str
    loss: float  # mean over examples of the per-example loss (summed target CE, or preference loss)
    loss_per_token: float  # nats per target token, for reading
    # Training examples in `loss`: all of them unless `dropped`, less those the prompt shows as demonstrations
    # (never scored with themselves in the prompt).
    n_examples: int
    # Racing stopped scoring it after a slice of the training set, clearly worse than the leader there;
    # never selected, since its loss is not over the same examples as the others'.
    dropped: bool = False
    # Standard error of the paired per-example difference to its parent (the incumbent it was scored against),
    # over the training examples: the noise the selection gate measures a gain against. None: no parent, or
    # dropped by racing.
    gap_se: float | None = None
    # Mean of that paired difference over the examples both were scored on, set only where either prompt shows
    # demonstrations and so leaves its own out (the means are then over different examples): the gate compares it
    # in place of loss - parent's loss. None: both were scored on every example.
    gap: float | None = None
    # Training accuracy on the multiple-choice examples (acc: the answer has the lowest summed NLL of the
    # options), from the loss's own forward passes; None where no example has options ranked.
    accuracy: float | None = None
    accuracy_norm: float | None = None  # the same per byte of each option (acc_norm)
    # The paired difference to its parent (mean, standard error) with each prompt's preference pairs at its best
    # softening (pmpo.scoring.temperature), which the gate also asks to clear. None: no parent, or the tempered
    # losses are the losses (no preference pair was softened), so the plain gate says it all.
    tempered_gap: float | None = None
    tempered_gap_se: float | None = None


@dataclass(frozen=True)
class SegmentEffect:
    """dL for one removable unit: L(prompt without it) - L(prompt); negative means it hurts."""

    index: int
    text: str
    delta_loss: float
    # Standard error of the paired per-example difference (without it - with it): a removal is proposed only
    # where delta_loss is below zero by more than the selection gate's z of these. 0: not measured.
    se: float = 0.0


@dataclass(frozen=True)
class Iteration:
    """What one PMPO iteration did."""

    iteration: int
    incumbent_id: str  # the incumbent after selection
    incumbent_loss: float
    best_candidate_loss: float  # lowest loss among this iteration's new candidates (inf if none)
    n_candidates: int  # new candidates scored this iteration
    rejected: dict[str, int]  # rewrites dropped, by reason
    segments: tuple[SegmentEffect, ...]
    hard_examples: tuple[int, ...]  # indices into the training set
    improved: bool
    n_dropped: int = 0  # of the new candidates, how many racing dropped early
    cost: Cost = Cost()  # wall time and model work of this iteration's steps


@dataclass(frozen=True)
class OptimizeResult:
    """The outcome of `pmpo.optimize`: all candidates, the per-iteration record and the best prompt."""

    candidates: tuple[Candidate, ...]
    iterations: tuple[Iteration, ...]
    initial: Candidate
    best: Candidate
    model_identity: str
    dataset_fingerprint: str
    seed: int
    initial_cost: Cost = Cost()  # scoring the initial prompt
    # The loop ended before its last iteration: `patience` iterations in a row accepted no candidate.
    stopped_early: bool = False
    stop_reason: StopReason = "iterations"
    # Steps of the iteration the budget cut short: done, then left (the flow's task cache keeps them for a rerun).
    unfinished_cost: Cost = Cost()

    @property
    def cost(self) -> Cost:
        """What the whole run cost: the initial scoring, every iteration, and any iteration the budget cut short."""
        return self.initial_cost + total([it.cost for it in self.iterations]) + self.unfinished_cost

    @property
    def best_prompt(self) -> str:
        """The prompt with the lowest training loss."""
        return self.best.prompt

    def candidate(self, candidate_id: str) -> Candidate:
        """Look up a candidate by id."""
        for c in self.candidates:
            if c.id == candidate_id:
                return c
        raise KeyError(candidate_id)
