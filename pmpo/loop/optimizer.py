"""The PMPO loop: mask segments, rewrite on hard examples (and, when on, add demonstrations chosen by loss:
`pmpo.loop.demonstrations`), keep a variant only when its loss is lower by more than the noise
(`pmpo.loop.selection`), stop when `patience` iterations in a row kept nothing or at the first step boundary
after the `budget` is spent (`pmpo.loop.budget`).

The loop exists once, in `PMPO.optimize`. The work it delegates (scoring, segment masking, rewriting,
selection) goes through the `Steps` protocol (`pmpo.loop.steps`): `LocalSteps` runs it in this process; the
Prefect flow passes steps that run the same functions as cached tasks. Same seed, same steps, same candidates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pmpo.data.examples import Dataset
from pmpo.loop.budget import Budget, BudgetSpent
from pmpo.loop.metering import MeteredSteps
from pmpo.loop.result import Candidate, Iteration, OptimizeResult, Origin, StopReason
from pmpo.loop.selection import candidates_from
from pmpo.loop.settings import OptimizerConfig
from pmpo.loop.steps import LocalSteps, Steps, removal_prompts
from pmpo.models.loading import LoadedModel
from pmpo.rewriting.backends import Rewriter
from pmpo.rewriting.proposal import hard_examples
from pmpo.scoring.balance import label_weights
from pmpo.scoring.loss import BaseScorer, LossMatrix
from pmpo.scoring.racing import race_prompts, slice_order

OnCandidate = Callable[[Candidate], None]
OnIteration = Callable[[Iteration], None]


class PMPO:
    """The optimizer: settings and model (or steps) in the constructor, prompt and data in `optimize`."""

    def __init__(
        self,
        lm: LoadedModel | None = None,
        config: OptimizerConfig = OptimizerConfig(),
        scorer: BaseScorer | None = None,
        on_candidate: OnCandidate | None = None,
        on_iteration: OnIteration | None = None,
        *,
        steps: Steps | None = None,
        rewriter: Rewriter | None = None,
    ):
        if steps is None and lm is None:
            raise TypeError("PMPO needs a loaded model or steps to run")
        self.config = config
        self.steps = MeteredSteps(steps or LocalSteps(lm, config, scorer, rewriter))
        self.on_candidate = on_candidate or (lambda c: None)
        self.on_iteration = on_iteration or (lambda it: None)

    def optimize(self, prompt: str, train: Dataset) -> OptimizeResult:
        """Run up to T iterations from `prompt` on the training set (fewer when `patience` or the budget stops it)."""
        self.steps.meter.take()  # work left from an interrupted earlier call is not this run's
        budget = Budget(self.config.budget, self.steps.usage)
        matrix = self._losses([prompt], train, 0)
        initial = candidates_from(matrix, [prompt], ["initial"], parent_id=None, iteration=0)[0]
        initial_cost = self.steps.meter.take()
        self.on_candidate(initial)
        candidates = {initial.id: initial}
        rows = {initial.id: matrix.row(0)}  # per-example losses of every candidate: hard examples come from here
        incumbent = initial
        iterations: list[Iteration] = []
        patience, idle, stop = self.config.patience, 0, "iterations"
        for t in range(1, self.config.iterations + 1):
            if patience and idle >= patience:  # `patience` iterations in a row accepted nothing
                stop = "patience"
                break
            try:
                budget.check()
                record, new = self._iteration(t, incumbent, train, candidates, rows, budget)
            except BudgetSpent:  # between two steps: the best so far stands, the finished steps are cached
                stop = "budget"
                break
            record = replace(record, cost=self.steps.meter.take())
            for c in new:
                candidates[c.id] = c
                self.on_candidate(c)
            incumbent = candidates[record.incumbent_id]
            iterations.append(record)
            self.on_iteration(record)
            idle = 0 if record.improved else idle + 1
        reason: StopReason = stop  # type: ignore[assignment]
        return OptimizeResult(
            candidates=tuple(candidates.values()),
            iterations=tuple(iterations),
            initial=initial,
            best=incumbent,
            model_identity=self.steps.model_identity,
            dataset_fingerprint=train.fingerprint,
            seed=self.config.seed,
            initial_cost=initial_cost,
            stopped_early=reason == "patience",
            stop_reason=reason,
            unfinished_cost=self.steps.meter.take(),
        )

    def _iteration(
        self,
        t: int,
        incumbent: Candidate,
        train: Dataset,
        known: dict[str, Candidate],
        rows: dict[str, LossMatrix],
        budget: Budget,
    ) -> tuple[Iteration, list[Candidate]]:
        hard = hard_examples(rows[incumbent.id].loss[0].tolist(), self.config.rewrite.hard_k)
        units, effects = [], ()
        if self.config.masking:  # off: the paper's ablation, no mask passes, no table, no removals
            units, effects = self.steps.segments(incumbent.prompt, incumbent.loss, train, t)
            budget.check()
        seen = frozenset(c.prompt for c in known.values())
        removals = []
        if self.config.segment_removal:
            removals = list(
                dict.fromkeys(
                    p
                    for p in removal_prompts(
                        incumbent.prompt, units, effects, self.config.chat_message, self.config.selection.gate_z
                    )
                    if p and p not in seen
                )
            )
        rewrites, rejected = self.steps.rewrites(incumbent.prompt, train, hard, effects, t, seen | set(removals))
        demos: list[str] = []
        if self.config.demonstrations.k:  # off: no call, no candidate, no pass
            row = rows[incumbent.id].loss[0].tolist()
            demos, not_shown = self.steps.demonstrations(
                incumbent.prompt, train, row, t, seen | set(removals + rewrites)
            )
            rejected = {**rejected, **{f"demonstrations/{r}": n for r, n in not_shown.items()}}
        budget.check()
        prompts = removals + rewrites + demos
        origins: list[Origin] = (
            ["segment_removal"] * len(removals) + ["rewrite"] * len(rewrites) + ["demonstrations"] * len(demos)
        )
        new = self._score(prompts, origins, incumbent, train, t, rows) if prompts else []
        winner = self.steps.select(incumbent, new, t)
        record = Iteration(
            iteration=t,
            incumbent_id=winner.id,
            incumbent_loss=winner.loss,
            best_candidate_loss=min((c.loss for c in new if not c.dropped), default=float("inf")),
            n_candidates=len(new),
            n_dropped=sum(c.dropped for c in new),
            rejected=rejected,
            segments=effects,
            hard_examples=tuple(hard),
            improved=winner.id != incumbent.id,  # by id: a cached step returns a copy
        )
        return record, new

    def _losses(self, prompts: list[str], train: Dataset, t: int, indices: list[int] | None = None) -> LossMatrix:
        """The prompts' per-example losses on the training set (or the examples at `indices`, a racing slice),
        weighted by label over the whole set when `balance_labels` is on."""
        whole = indices is None or len(indices) == len(train)
        matrix = self.steps.losses(prompts, train if whole else train.subset(indices), t)
        weights = label_weights(train.examples) if self.config.balance_labels else None
        return matrix.weighted(weights if weights is None or whole else weights[indices])

    def _score(
        self,
        prompts: list[str],
        origins: list[Origin],
        incumbent: Candidate,
        train: Dataset,
        t: int,
        rows: dict[str, LossMatrix],
    ) -> list[Candidate]:
        """Score the iteration's prompts in one batch, or race them against the incumbent when racing is on."""

        def score(batch: list[str], indices: list[int]) -> LossMatrix:
            return self._losses(batch, train, t, indices)

        order = slice_order(len(train), self.config.seed, t)
        parent = rows[incumbent.id]
        raced = race_prompts(score, prompts, len(train), self.config.racing, reference=parent.loss[0], order=order)
        new = []
        for prompt, origin, matrix in zip(prompts, origins, raced):
            dropped = matrix.loss.shape[1] < len(train)
            [c] = candidates_from(
                matrix,
                [prompt],
                [origin],
                parent_id=incumbent.id,
                iteration=t,
                dropped=dropped,
                reference=parent,  # the gate's noise: the paired difference to the incumbent
            )
            if not dropped:  # hard examples of a future incumbent come from its full row
                rows[c.id] = matrix
            new.append(c)
        return new
