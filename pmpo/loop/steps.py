"""The steps the loop delegates: removable units, the masking analysis, segment removals, rewrites, selection.

`Steps` is the protocol the loop calls; `LocalSteps` runs each step in this process. The functions it calls are
the ones the Prefect flow runs as cached tasks, so both give the same candidates for the same seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Protocol, Sequence

import numpy as np

from pmpo.data.examples import Dataset
from pmpo.errors import ContextLengthError
from pmpo.loop.demonstrations import demonstration_prompts
from pmpo.loop.result import Candidate, SegmentEffect
from pmpo.loop.selection import clears, select
from pmpo.loop.settings import OptimizerConfig
from pmpo.masking.analysis import masking_analysis
from pmpo.masking.units import Units, locate, model_units, segment
from pmpo.models.loading import LoadedModel, TextSide
from pmpo.models.usage import UsageSnapshot
from pmpo.rewriting.backends import Rewriter, as_rewriter
from pmpo.rewriting.proposal import propose
from pmpo.rewriting.requests import by_size
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.balance import label_weights
from pmpo.scoring.context_budget import check_fits
from pmpo.scoring.loss import BaseScorer, LossMatrix, Scorer
from pmpo.scoring.settings import ScorerSettings
from pmpo.text.template import editable, with_editable

Rewrites = tuple[list[str], dict[str, int]]  # kept variants, rejections by reason
# A variant that makes some training example too long for the scored model's context: rejected before it is
# scored (the scorer would raise ContextLengthError and fail the run for one candidate's fault). Its own reason,
# not the reply parser's "too_long" (over rewrite.max_chars): the way out differs (shorter inputs, a longer context).
TOO_LONG_CONTEXT = "too_long_context"


def rewrite_seed(seed: int, iteration: int, rank: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, iteration, hard-example rank)."""
    return int(hashlib.sha256(f"{seed}:{iteration}:{rank}".encode()).hexdigest()[:8], 16)


def unit_mode(setting: str, n_params: int | None, small_model_params: int) -> str:
    """ "model" or "splitter": the setting itself, or by the rewriter's size when it is "auto"."""
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


def segment_effects(
    scorer: BaseScorer, prompt_loss: float, units: Units, train: Dataset, *, balance_labels: bool = True
) -> tuple[SegmentEffect, ...]:
    """dL_j = L(prompt without unit j) - L(prompt) for every unit, with its paired standard error; `prompt_loss`
    is L(units.prompt), weighted by label as the loop's losses are when `balance_labels` is on."""
    if len(units.spans) < 2:  # removing the only unit leaves no prompt: nothing to learn from it
        return ()
    weights = label_weights(train.examples) if balance_labels else None

    def losses(texts: Sequence[str]) -> np.ndarray:
        return scorer.loss_matrix([units.whole(t) for t in texts], train.examples).weighted(weights).loss

    # The prompt's own per-example losses pair with each ablation's. The loop scored it already with this
    # scorer, so its memo answers without a forward pass.
    reference = losses([units.prompt])[0]
    return masking_analysis(
        losses,
        prompt_loss,
        units,
        reference=reference,
    )


def removal_prompts(
    prompt: str,
    units: Sequence[str],
    effects: Sequence[SegmentEffect],
    message: int | None = None,
    gate_z: float = 0.0,
) -> list[str]:
    """`prompt` without each unit that hurts beyond its noise (dL + gate_z * se < 0; gate_z 0: any dL < 0), cut
    exactly as the masking analysis cut it (`message`: the chat prompt's optimised message, as
    `OptimizerConfig.chat_message`; `gate_z`: the selection gate's, so a removal proposed can also be accepted)."""
    spans = locate(editable(prompt, message), units)
    cut = [spans.without(e.index) for e in effects if clears(e.delta_loss, e.se, gate_z)]
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
    scorer: BaseScorer | None = None,
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
        outcome = propose(
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
        variants.extend(outcome.variants)
        for reason, count in outcome.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    prompts = [with_editable(incumbent, v, message) for v in variants]
    text_side = scorer.lm if scorer is not None else rewriter if isinstance(rewriter, LoadedModel) else None
    if text_side is None:  # no scored model at hand to measure with (a rewriter that is not it): kept as they are
        return prompts, rejected
    objective = scorer.settings.mc_objective if scorer is not None else ScorerSettings().mc_objective
    fitting = [p for p in prompts if fits(text_side, p, train, objective)]
    rejected[TOO_LONG_CONTEXT] = len(prompts) - len(fitting)
    return fitting, rejected


def fits(text_side: TextSide | LoadedModel, prompt: str, train: Dataset, mc_objective: str) -> bool:
    """Whether every training example fits the model's context under `prompt`."""
    try:
        check_fits(text_side, prompt, train, mc_objective)
    except ContextLengthError:
        return False
    return True


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

    def demonstrations(
        self, incumbent: str, train: Dataset, losses: Sequence[float], iteration: int, seen: frozenset[str]
    ) -> Rewrites:
        """The incumbent with training examples as demonstrations (`losses`: its per-example losses), and the
        sets not proposed by reason. Called only when `OptimizerConfig.demonstrations.k` is above zero."""
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
        self,
        lm: LoadedModel,
        config: OptimizerConfig,
        scorer: BaseScorer | None = None,
        rewriter: Rewriter | None = None,
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
            self.rewriter,
            prompt,
            iteration,
            units=c.units,
            max_units=c.max_units,
            small_model_params=c.rewrite.small_model_params,
            seed=c.seed,
            chat_message=c.chat_message,
        )
        return list(units.texts), segment_effects(
            self.scorer, prompt_loss, units, train, balance_labels=self.config.balance_labels
        )

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
            self.rewriter,
            incumbent,
            train,
            hard,
            effects,
            c.rewrite,
            iteration,
            seen,
            self.scorer,
            seed=c.seed,
            chat_message=c.chat_message,
        )

    def demonstrations(
        self, incumbent: str, train: Dataset, losses: Sequence[float], iteration: int, seen: frozenset[str]
    ) -> Rewrites:
        """The incumbent with training examples as demonstrations, and the sets not proposed by reason."""
        c = self.config
        return demonstration_prompts(
            self.lm,
            incumbent,
            train,
            losses,
            c.demonstrations,
            iteration,
            seen,
            seed=c.seed,
            chat_message=c.chat_message,
            mc_objective=self.scorer.settings.mc_objective,
        )

    def select(self, incumbent: Candidate, candidates: Sequence[Candidate], iteration: int) -> Candidate:
        """The new incumbent."""
        return select(incumbent, candidates, self.config.selection)

    def usage(self) -> UsageSnapshot:
        """The model work done so far in this process by the scored model and, when another, the rewriter."""
        own = self.lm.usage.snapshot()
        return own if self.rewriter.usage is self.lm.usage else own + self.rewriter.usage.snapshot()
