"""The PMPO loop: mask segments, rewrite on hard examples, keep a variant only when its loss is lower.

Each step is a plain function so that the Prefect flow can run (and cache) them one by one;
`PMPO.optimize` chains them for library users.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from pmpo.data.examples import Dataset
from pmpo.loss import Scorer
from pmpo.models import LoadedModel
from pmpo.result import Candidate, Iteration, OptimizeResult, Origin, SegmentEffect
from pmpo.rewrite import RewriteSettings, hard_examples, propose
from pmpo.segments import masking_analysis, model_units, split_units, without_unit

OnCandidate = Callable[[Candidate], None]
OnIteration = Callable[[Iteration], None]


@dataclass(frozen=True)
class OptimizerConfig:
    """Settings of the PMPO loop."""

    # The paper runs T = 20; 3 shows the method at work in a few minutes on a 2-core CPU.
    iterations: int = 3
    max_units: int = 5  # the paper's cap on removable units per prompt
    # The deterministic splitter is robust for small models; "model" asks the rewriter to mark <mask> units.
    units: Literal["splitter", "model"] = "splitter"
    # Dropping a unit with dL < 0 is a candidate too: it was already scored by the masking analysis.
    segment_removal: bool = True
    rewrite: RewriteSettings = field(default_factory=RewriteSettings)
    seed: int = 0


def candidate_id(prompt: str) -> str:
    """Content id of a prompt: the same text is the same candidate."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def rewrite_seed(seed: int, iteration: int, rank: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, iteration, hard-example rank)."""
    return int(hashlib.sha256(f"{seed}:{iteration}:{rank}".encode()).hexdigest()[:8], 16)


def score_candidates(
    scorer: Scorer, prompts: Sequence[str], train: Dataset, *, origin: Origin, parent_id: str | None, iteration: int
) -> list[Candidate]:
    """Score prompts on the whole training set and wrap them as candidates."""
    matrix = scorer.loss_matrix(list(prompts), train.examples)
    losses, per_token = matrix.prompt_loss(), matrix.prompt_loss_per_token()
    return [
        Candidate(
            id=candidate_id(p),
            parent_id=parent_id,
            iteration=iteration,
            origin=origin,
            prompt=p,
            loss=float(losses[i]),
            loss_per_token=float(per_token[i]),
            n_examples=len(train),
        )
        for i, p in enumerate(prompts)
    ]


def prompt_units(lm: LoadedModel, prompt: str, config: OptimizerConfig, iteration: int) -> list[str]:
    """The removable units of `prompt`: splitter by default, model-marked on request."""
    if config.units == "model":
        return model_units(lm, prompt, seed=rewrite_seed(config.seed, iteration, -1), max_units=config.max_units)
    return split_units(prompt, max_units=config.max_units)


def segment_effects(scorer: Scorer, prompt_loss: float, units: list[str], train: Dataset) -> tuple[SegmentEffect, ...]:
    """dL_j = L(prompt without unit j) - L(prompt) for every unit."""
    if len(units) < 2:  # removing the only unit leaves no prompt: nothing to learn from it
        return ()
    return masking_analysis(
        lambda prompts: scorer.loss_matrix(prompts, train.examples).prompt_loss().tolist(), prompt_loss, units
    )


def removal_prompts(units: list[str], effects: Sequence[SegmentEffect]) -> list[str]:
    """Prompts without each unit that hurts (dL < 0)."""
    return [without_unit(units, e.index) for e in effects if e.delta_loss < 0]


def rewrite_prompts(
    lm: LoadedModel,
    incumbent: str,
    train: Dataset,
    hard: Sequence[int],
    effects: Sequence[SegmentEffect],
    config: OptimizerConfig,
    iteration: int,
    seen: set[str],
) -> tuple[list[str], dict[str, int]]:
    """One rewrite request per hard example, n variants each; returns kept variants and rejections by reason."""
    variants: list[str] = []
    rejected: dict[str, int] = {}
    for rank, index in enumerate(hard):
        proposal = propose(
            lm,
            prompt=incumbent,
            example=train.examples[index],
            effects=effects,
            task_description=train.description,
            settings=config.rewrite,
            seed=rewrite_seed(config.seed, iteration, rank),
            seen=seen | set(variants),
        )
        variants.extend(proposal.variants)
        for reason, count in proposal.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    return variants, rejected


def select(incumbent: Candidate, candidates: Sequence[Candidate]) -> Candidate:
    """The lowest-loss candidate if strictly lower than the incumbent, else the incumbent (ties keep it)."""
    best = min(candidates, key=lambda c: (c.loss, c.id), default=None)
    return best if best is not None and best.loss < incumbent.loss else incumbent


class PMPO:
    """The optimizer: settings and model in the constructor, prompt and data in `optimize`."""

    def __init__(
        self,
        lm: LoadedModel,
        config: OptimizerConfig = OptimizerConfig(),
        scorer: Scorer | None = None,
        on_candidate: OnCandidate | None = None,
        on_iteration: OnIteration | None = None,
    ):
        self.lm = lm
        self.config = config
        self.scorer = scorer or Scorer(lm)
        self.on_candidate = on_candidate or (lambda c: None)
        self.on_iteration = on_iteration or (lambda it: None)

    def optimize(self, prompt: str, train: Dataset) -> OptimizeResult:
        """Run T iterations from `prompt` on the training set."""
        initial = score_candidates(self.scorer, [prompt], train, origin="initial", parent_id=None, iteration=0)[0]
        self.on_candidate(initial)
        candidates = {initial.id: initial}
        incumbent = initial
        iterations = []
        for t in range(1, self.config.iterations + 1):
            record, new = self._iteration(t, incumbent, train, candidates)
            for c in new:
                candidates[c.id] = c
                self.on_candidate(c)
            incumbent = candidates[record.incumbent_id]
            iterations.append(record)
            self.on_iteration(record)
        return OptimizeResult(
            candidates=tuple(candidates.values()),
            iterations=tuple(iterations),
            initial=initial,
            best=incumbent,
            model_identity=self.lm.identity,
            dataset_fingerprint=train.fingerprint,
            seed=self.config.seed,
        )

    def _iteration(
        self, t: int, incumbent: Candidate, train: Dataset, known: dict[str, Candidate]
    ) -> tuple[Iteration, list[Candidate]]:
        row_losses = self.scorer.loss_matrix([incumbent.prompt], train.examples).loss[0]  # memoised
        hard = hard_examples(row_losses.tolist(), self.config.rewrite.hard_k)
        units = prompt_units(self.lm, incumbent.prompt, self.config, t)
        effects = segment_effects(self.scorer, incumbent.loss, units, train)
        seen = {c.prompt for c in known.values()}
        removals = [p for p in removal_prompts(units, effects) if p and p not in seen] if self.config.segment_removal else []
        rewrites, rejected = rewrite_prompts(self.lm, incumbent.prompt, train, hard, effects, self.config, t, seen | set(removals))
        new = score_candidates(self.scorer, removals, train, origin="segment_removal", parent_id=incumbent.id, iteration=t)
        new += score_candidates(self.scorer, rewrites, train, origin="rewrite", parent_id=incumbent.id, iteration=t)
        winner = select(incumbent, new)
        record = Iteration(
            iteration=t,
            incumbent_id=winner.id,
            incumbent_loss=winner.loss,
            best_candidate_loss=min((c.loss for c in new), default=float("inf")),
            n_candidates=len(new),
            rejected=rejected,
            segments=effects,
            hard_examples=tuple(hard),
            improved=winner is not incumbent,
        )
        return record, new
