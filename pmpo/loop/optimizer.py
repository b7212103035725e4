"""The PMPO loop: mask segments, rewrite on hard examples, keep a variant only when its loss is lower.

The loop exists once, in `PMPO.optimize`. The work it delegates (scoring, segment masking, rewriting,
selection) goes through a small `Steps` protocol: `LocalSteps` runs it in this process; the Prefect flow
passes steps that run the same functions as cached tasks. Same seed, same steps, same candidates.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Callable, Protocol, Sequence

import numpy as np

from pmpo.data.examples import Dataset
from pmpo.scoring.loss import LossMatrix, Scorer
from pmpo.models.loading import LoadedModel
from pmpo.scoring.racing import race_prompts, slice_order
from pmpo.loop.result import Candidate, Iteration, OptimizeResult, Origin, SegmentEffect
from pmpo.rewriting.proposal import RewriteSettings, by_size, hard_examples, propose
from pmpo.rewriting.backends import Rewriter, as_rewriter
from pmpo.loop.metering import MeteredSteps
from pmpo.masking.units import Units, locate, masking_analysis, model_units, segment
from pmpo.text.template import editable, with_editable
from pmpo.models.usage import UsageSnapshot
from pmpo.loop.settings import OptimizerConfig

OnCandidate = Callable[[Candidate], None]
OnIteration = Callable[[Iteration], None]
Rewrites = tuple[list[str], dict[str, int]]  # kept variants, rejections by reason


def candidate_id(prompt: str) -> str:
    """Content id of a prompt: the same text is the same candidate."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def rewrite_seed(seed: int, iteration: int, rank: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, iteration, hard-example rank)."""
    return int(hashlib.sha256(f"{seed}:{iteration}:{rank}".encode()).hexdigest()[:8], 16)


def candidates_from(
    matrix: LossMatrix,
    prompts: Sequence[str],
    origins: Sequence[Origin],
    *,
    parent_id: str | None,
    iteration: int,
    dropped: bool = False,
) -> list[Candidate]:
    """Wrap scored prompts as candidates (`dropped`: racing stopped them short of the whole training set)."""
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
            n_examples=matrix.loss.shape[1],
            dropped=dropped,
        )
        for i, (p, origin) in enumerate(zip(prompts, origins))
    ]


def unit_mode(setting: str, n_params: int | None, small_model_params: int) -> str:
    """"model" or "splitter": the setting itself, or by the rewriter's size when it is "auto"."""
    return by_size(setting, n_params, small_model_params, small="splitter", large="model", what="units")


def prompt_units(
    rewriter: Rewriter | LoadedModel,
    prompt: str,
    iteration: int,
    *,
    units: str,
    max_units: int,
    small_model_params: int,
    seed: int,
    chat_message: int | None = None,
) -> Units:
    """The removable units of `prompt` (of its `chat_message`, for a chat prompt) as spans: model-marked for large
    rewriters, else the splitter's. Takes only the settings it reads (OptimizerConfig's), so a cached step's key
    holds them all."""
    rewriter = as_rewriter(rewriter)
    text = editable(prompt, chat_message)
    if unit_mode(units, rewriter.n_params, small_model_params) == "model":
        spans = model_units(rewriter, text, seed=rewrite_seed(seed, iteration, -1), max_units=max_units)
    else:
        spans = segment(text, max_units=max_units)
    return replace(spans, frame=prompt, message=chat_message) if text != prompt else spans


def segment_effects(scorer: Scorer, prompt_loss: float, units: Units, train: Dataset) -> tuple[SegmentEffect, ...]:
    """dL_j = L(prompt without unit j) - L(prompt) for every unit; `prompt_loss` is L(units.prompt)."""
    if len(units.spans) < 2:  # removing the only unit leaves no prompt: nothing to learn from it
        return ()
    return masking_analysis(
        lambda texts: scorer.loss_matrix([units.whole(t) for t in texts], train.examples).prompt_loss().tolist(),
        prompt_loss,
        units,
    )


def removal_prompts(
    prompt: str, units: Sequence[str], effects: Sequence[SegmentEffect], message: int | None = None
) -> list[str]:
    """`prompt` without each unit that hurts (dL < 0), cut exactly as the masking analysis cut it (`message`: the
    chat prompt's optimised message, as `OptimizerConfig.chat_message`)."""
    spans = locate(editable(prompt, message), units)
    cut = [spans.without(e.index) for e in effects if e.delta_loss < 0]
    return [with_editable(prompt, text, message) for text in cut if text]


def rewrite_prompts(
    rewriter: Rewriter | LoadedModel,
    incumbent: str,
    train: Dataset,
    hard: Sequence[int],
    effects: Sequence[SegmentEffect],
    settings: RewriteSettings,
    iteration: int,
    seen: set[str] | frozenset[str],
    scorer: Scorer | None = None,
    *,
    seed: int,
    chat_message: int | None = None,
) -> Rewrites:
    """One rewrite request per hard example, n variants each; returns kept variants and rejections by reason.

    `scorer` (the FULL template only) finds the answer the scored model now prefers on each hard example;
    it is required when the rewriter is not the scored model. `seed` and `chat_message` as OptimizerConfig's.
    """
    variants: list[str] = []
    rejected: dict[str, int] = {}
    message = chat_message
    text = editable(incumbent, message)  # a chat prompt's optimised message; the others stay as they are
    known = {editable(s, message) for s in seen}
    for rank, index in enumerate(hard):
        proposal = propose(
            rewriter,
            prompt=text,
            example=train.examples[index],
            effects=effects,
            task_description=train.description,
            settings=settings,
            seed=rewrite_seed(seed, iteration, rank),
            seen=known | set(variants),
            scorer=scorer,
            scored_prompt=incumbent,
        )
        variants.extend(proposal.variants)
        for reason, count in proposal.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    return [with_editable(incumbent, v, message) for v in variants], rejected


def select(incumbent: Candidate, candidates: Sequence[Candidate]) -> Candidate:
    """The lowest-loss candidate if strictly lower than the incumbent, else the incumbent (ties keep it).

    Candidates racing dropped early never win: their loss is over fewer examples than the incumbent's.
    """
    best = min((c for c in candidates if not c.dropped), key=lambda c: (c.loss, c.id), default=None)
    return best if best is not None and best.loss < incumbent.loss else incumbent


class Steps(Protocol):
    """The work the loop delegates; where it runs (this process, cached Prefect tasks) is the steps' business."""

    model_identity: str

    def losses(self, prompts: Sequence[str], train: Dataset, iteration: int) -> LossMatrix:
        """Per-example losses of `prompts` on the training set."""
        ...

    def segments(
        self, prompt: str, prompt_loss: float, train: Dataset, iteration: int
    ) -> tuple[list[str], tuple[SegmentEffect, ...]]:
        """The removable units of `prompt` and the loss change when each is masked out."""
        ...

    def rewrites(
        self,
        incumbent: str,
        train: Dataset,
        hard: Sequence[int],
        effects: Sequence[SegmentEffect],
        iteration: int,
        seen: frozenset[str],
    ) -> Rewrites:
        """Rewrite variants of `incumbent` proposed on the hard examples, and rejections by reason."""
        ...

    def select(self, incumbent: Candidate, candidates: Sequence[Candidate], iteration: int) -> Candidate:
        """The new incumbent."""
        ...

    def usage(self) -> UsageSnapshot:
        """The model work done so far by these steps' model in this process (zeros if it never ran)."""
        ...


class LocalSteps:
    """Steps run in this process, with one scorer (its memo spares re-scoring a prompt seen before) and one
    rewriter (the scored model itself unless another is given)."""

    def __init__(
        self, lm: LoadedModel, config: OptimizerConfig, scorer: Scorer | None = None, rewriter: Rewriter | None = None
    ):
        self.lm, self.config = lm, config
        self.scorer = scorer or Scorer(lm)
        self.rewriter = rewriter or as_rewriter(lm)
        self.model_identity = lm.identity

    def losses(self, prompts: Sequence[str], train: Dataset, iteration: int) -> LossMatrix:
        """Per-example losses of `prompts` on the training set."""
        return self.scorer.loss_matrix(list(prompts), train.examples)

    def segments(
        self, prompt: str, prompt_loss: float, train: Dataset, iteration: int
    ) -> tuple[list[str], tuple[SegmentEffect, ...]]:
        """The removable units of `prompt` and the loss change when each is masked out."""
        c = self.config
        units = prompt_units(
            self.rewriter, prompt, iteration, units=c.units, max_units=c.max_units,
            small_model_params=c.rewrite.small_model_params, seed=c.seed, chat_message=c.chat_message,
        )  # fmt: skip
        return list(units.texts), segment_effects(self.scorer, prompt_loss, units, train)

    def rewrites(
        self,
        incumbent: str,
        train: Dataset,
        hard: Sequence[int],
        effects: Sequence[SegmentEffect],
        iteration: int,
        seen: frozenset[str],
    ) -> Rewrites:
        """Rewrite variants of `incumbent` proposed on the hard examples, and rejections by reason."""
        c = self.config
        return rewrite_prompts(
            self.rewriter, incumbent, train, hard, effects, c.rewrite, iteration, seen, self.scorer,
            seed=c.seed, chat_message=c.chat_message,
        )  # fmt: skip

    def select(self, incumbent: Candidate, candidates: Sequence[Candidate], iteration: int) -> Candidate:
        """The new incumbent."""
        return select(incumbent, candidates)

    def usage(self) -> UsageSnapshot:
        """The model work done so far in this process by the scored model and, when another, the rewriter."""
        own = self.lm.usage.snapshot()
        return own if self.rewriter.usage is self.lm.usage else own + self.rewriter.usage.snapshot()


class PMPO:
    """The optimizer: settings and model (or steps) in the constructor, prompt and data in `optimize`."""

    def __init__(
        self,
        lm: LoadedModel | None = None,
        config: OptimizerConfig = OptimizerConfig(),
        scorer: Scorer | None = None,
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
        """Run T iterations from `prompt` on the training set."""
        self.steps.meter.take()  # work left from an interrupted earlier call is not this run's
        matrix = self.steps.losses([prompt], train, 0)
        initial = candidates_from(matrix, [prompt], ["initial"], parent_id=None, iteration=0)[0]
        initial_cost = self.steps.meter.take()
        self.on_candidate(initial)
        candidates = {initial.id: initial}
        rows = {initial.id: matrix.loss[0]}  # per-example losses of every candidate: hard examples come from here
        incumbent = initial
        iterations = []
        for t in range(1, self.config.iterations + 1):
            record, new = self._iteration(t, incumbent, train, candidates, rows)
            record = replace(record, cost=self.steps.meter.take())
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
            model_identity=self.steps.model_identity,
            dataset_fingerprint=train.fingerprint,
            seed=self.config.seed,
            initial_cost=initial_cost,
        )

    def _iteration(
        self, t: int, incumbent: Candidate, train: Dataset, known: dict[str, Candidate], rows: dict[str, np.ndarray]
    ) -> tuple[Iteration, list[Candidate]]:
        hard = hard_examples(rows[incumbent.id].tolist(), self.config.rewrite.hard_k)
        units, effects = [], ()
        if self.config.masking:  # off: the paper's ablation, no mask passes, no table, no removals
            units, effects = self.steps.segments(incumbent.prompt, incumbent.loss, train, t)
        seen = frozenset(c.prompt for c in known.values())
        removals = []
        if self.config.segment_removal:
            removals = list(dict.fromkeys(p for p in removal_prompts(incumbent.prompt, units, effects, self.config.chat_message) if p and p not in seen))
        rewrites, rejected = self.steps.rewrites(incumbent.prompt, train, hard, effects, t, seen | set(removals))
        prompts = removals + rewrites
        origins: list[Origin] = ["segment_removal"] * len(removals) + ["rewrite"] * len(rewrites)
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

    def _score(
        self,
        prompts: list[str],
        origins: list[Origin],
        incumbent: Candidate,
        train: Dataset,
        t: int,
        rows: dict[str, np.ndarray],
    ) -> list[Candidate]:
        """Score the iteration's prompts in one batch, or race them against the incumbent when racing is on."""

        def score(batch: list[str], indices: list[int]) -> LossMatrix:
            data = train if len(indices) == len(train) else train.subset(indices)
            return self.steps.losses(batch, data, t)

        order = slice_order(len(train), self.config.seed, t)
        raced = race_prompts(score, prompts, len(train), self.config.racing, reference=rows[incumbent.id], order=order)
        new = []
        for prompt, origin, matrix in zip(prompts, origins, raced):
            dropped = matrix.loss.shape[1] < len(train)
            [c] = candidates_from(matrix, [prompt], [origin], parent_id=incumbent.id, iteration=t, dropped=dropped)
            if not dropped:  # hard examples of a future incumbent come from its full row
                rows[c.id] = matrix.loss[0]
            new.append(c)
        return new
