"""PMPO: prompt optimisation by the model's own token-level loss on reference outputs.

import pmpo
data = pmpo.load_dataset("builtin:sentiment")
split = pmpo.split_dataset(data, seed=0)
result = pmpo.optimize("Read the text.", split.train, iterations=2)
print(result.initial.loss, "->", result.best.loss, result.best_prompt)
"""

from __future__ import annotations

from pmpo.data import (
    ColumnMap,
    Dataset,
    MultipleChoice,
    Preference,
    Split,
    Supervised,
    demo_task,
    load_dataset,
    split_dataset,
)
from pmpo.evaluation.heldout import Evaluation, evaluate
from pmpo.loop.optimizer import PMPO, OnCandidate, OnIteration
from pmpo.loop.result import Candidate, Iteration, OptimizeResult, SegmentEffect
from pmpo.loop.settings import DemonstrationSettings, OptimizerConfig, SelectionSettings
from pmpo.models.loading import LoadedModel, load_model
from pmpo.models.settings import DEFAULT_MODEL, ModelSettings
from pmpo.models.usage import Cost, Usage, UsageSnapshot
from pmpo.rewriting.backends import ChatRewriter, LocalRewriter, Rewriter
from pmpo.rewriting.settings import RewriterSettings, RewriteSettings
from pmpo.scoring.context_budget import check_fits
from pmpo.scoring.loss import LossMatrix, Scorer
from pmpo.scoring.settings import RacingSettings, ScorerSettings

__all__ = [
    "PMPO",
    "Candidate",
    "ColumnMap",
    "Dataset",
    "DemonstrationSettings",
    "Evaluation",
    "Iteration",
    "LoadedModel",
    "LossMatrix",
    "ModelSettings",
    "MultipleChoice",
    "OptimizeResult",
    "OptimizerConfig",
    "Preference",
    "RacingSettings",
    "RewriteSettings",
    "Rewriter",
    "LocalRewriter",
    "ChatRewriter",
    "RewriterSettings",
    "Cost",
    "Usage",
    "UsageSnapshot",
    "Scorer",
    "ScorerSettings",
    "SegmentEffect",
    "SelectionSettings",
    "Split",
    "Supervised",
    "DEFAULT_MODEL",
    "demo_task",
    "evaluate",
    "load_dataset",
    "load_model",
    "optimize",
    "split_dataset",
]


def optimize(
    prompt: str,
    train: Dataset,
    model: LoadedModel | ModelSettings | str = DEFAULT_MODEL,
    *,
    config: OptimizerConfig = OptimizerConfig(),
    scorer_settings: ScorerSettings = ScorerSettings(),
    iterations: int | None = None,
    seed: int | None = None,
    on_candidate: OnCandidate | None = None,
    on_iteration: OnIteration | None = None,
    rewriter: Rewriter | None = None,
) -> OptimizeResult:
    """Optimise `prompt` for `model` on the training examples; returns every candidate and the best.

    `rewriter` writes the rewrites (default: `model` itself), e.g. a chat endpoint:
    `ChatRewriter.connect(RewriterSettings(backend="openai", base_url=..., model=...))`.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    check_fits(lm, prompt, train, scorer_settings.mc_objective)
    if iterations is not None:
        config = config.model_copy(update={"iterations": iterations})
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    optimizer = PMPO(
        lm, config, Scorer(lm, scorer_settings), on_candidate=on_candidate, on_iteration=on_iteration, rewriter=rewriter
    )
    return optimizer.optimize(prompt, train)
