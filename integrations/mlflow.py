"""PMPO inside `mlflow.genai.optimize_prompts`: an optimizer that selects prompts by the model's own loss of the
references, where GEPA and MetaPrompt select by a judge or a metric on generated text.

    from integrations.mlflow import PmpoOptimizer
    result = mlflow.genai.optimize_prompts(
        predict_fn=predict_fn, train_data=rows, prompt_uris=["prompts:/qa/1"],
        optimizer=PmpoOptimizer(ModelSettings(spec="HuggingFaceTB/SmolLM2-135M-Instruct")),
    )

MLflow loads the prompts, opens a run, calls `optimize`, and registers what it returns as new versions (with the
source version's model_config) linked to that run. This adapter turns the rows into pmpo examples
(integrations.mlflow_examples), runs pmpo's loop on them, and writes pmpo's record (candidates table, losses by
iteration, cost, plot, settings) into MLflow's run through the same writers `pmpo optimize` uses.

Why the library loop and not the optimisation flow: the flow owns what MLflow already owns here (its own run,
found by a run key and resumed; its own train/held-out split; registering the best prompt under the task's name).
The loop with pmpo's process-wide model and scorer caches (tasks.models) gives the same candidates for the same
seed, scores in-process or against a served model alike, and leaves the run and the registry to MLflow.

Several prompt URIs: each prompt is optimised in turn, the others fixed. pmpo scores a prompt by the loss of the
row's reference given that prompt and the row's inputs, so the others do not enter its loss; each gets its own
child run under MLflow's (one prompt: MLflow's run itself). `prompts=[...]` limits the work to some of them.
"""

from __future__ import annotations

import logging
from statistics import fmean
from typing import Any, Sequence

from mlflow.genai.optimize.optimizers import BasePromptOptimizer
from mlflow.genai.optimize.optimizers.base import _EvalFunc
from mlflow.genai.optimize.types import PromptOptimizerOutput

from flows.record import Recorder, flatten
from integrations.mlflow_examples import to_dataset
from pmpo.data.examples import Dataset
from pmpo.errors import PmpoError
from pmpo.loop.optimizer import PMPO
from pmpo.loop.result import OptimizeResult
from pmpo.loop.settings import OptimizerConfig
from pmpo.loop.steps import LocalSteps
from pmpo.models.settings import DEFAULT_MODEL, ModelSettings
from pmpo.models.usage import UsageSnapshot
from pmpo.rewriting.settings import RewriterSettings
from pmpo.scoring.context_budget import check_fits
from pmpo.scoring.settings import ScorerSettings
from pmpo.text.rendering import placed
from pmpo.text.template import normalized
from tasks.identity import record_tags
from tasks.mlflow import active, runs
from tasks.mlflow.runs import TrackedRun
from tasks.models import ModelRef, model_ref, scorer, text_side
from tasks.models import usage as model_usage
from tasks.rewriters import RewriterRef, rewriter, rewriter_ref
from tasks.rewriters import usage as rewriter_usage

log = logging.getLogger(__name__)

__all__ = ["PmpoOptimizer"]


class PmpoOptimizer(BasePromptOptimizer):
    """PMPO as an MLflow prompt optimizer: pmpo's settings in the constructor, MLflow's data in `optimize`.

    `model`: the model whose loss selects prompts: in this process (a built-in name, hub id or directory), or a
    served model with echoed prompt log-probs (`ModelSettings(backend="openai", base_url=..., tokenizer=...)`).
    `config`: the loop (iterations, rewrites per hard example, masking, seed). `scoring`: how the loss is
    computed. `rewriter`: who writes the rewrites (default: the scored model itself). `description`: the task in
    your words, shown to the rewriter. `prompts`: the names of the prompts to optimise (default: all).
    `evaluate`: also run MLflow's `eval_fn` (your predict_fn and scorers) on the initial and the optimised
    prompts and report its mean score as MLflow's initial/final score; off by default, as it generates.
    """

    def __init__(
        self,
        model: ModelSettings | str = DEFAULT_MODEL,
        *,
        config: OptimizerConfig = OptimizerConfig(),
        scoring: ScorerSettings = ScorerSettings(),
        rewriter: RewriterSettings = RewriterSettings(),
        description: str = "",
        prompts: Sequence[str] | None = None,
        evaluate: bool = False,
    ):
        self.model = ModelSettings(spec=model) if isinstance(model, str) else model
        self.config = config
        self.scoring = scoring
        self.rewriter = rewriter
        self.description = description.strip()
        self.prompts = None if prompts is None else list(prompts)
        self.evaluate = evaluate

    def optimize(
        self,
        eval_fn: _EvalFunc,
        train_data: list[dict[str, Any]],
        target_prompts: dict[str, str],
        enable_tracking: bool = True,
    ) -> PromptOptimizerOutput:
        """Optimise each chosen prompt by PMPO on `train_data`; returns the best text of each (MLflow registers it)."""
        names = self._chosen(target_prompts)
        initial = {name: normalized(template) for name, template in target_prompts.items()}
        with active.on_callers_store():
            parent = active.active_run() if enable_tracking else None
            ref = model_ref(self.model, self.scoring)
            writer = rewriter_ref(self.rewriter, ref)
            # Rows first, for every prompt: a missing variable or reference fails before any model work.
            datasets = {name: to_dataset(train_data, initial[name], name, self.description) for name in names}
            side = text_side(ref)
            for name in names:
                check_fits(side, initial[name], datasets[name], self.scoring.mc_objective)
            if parent is not None:
                active.log_params(parent, self._params(writer))
            best = {}
            for name in names:
                run = parent if parent is None or len(names) == 1 else self._child(parent, name)
                result = self._one(ref, writer, initial[name], datasets[name], run)
                if run is not None:
                    runs.set_tags(
                        run, self._tags(ref, writer, datasets[name], name, placed(result.best.prompt, side.placement))
                    )
                    if run is not parent:
                        runs.finish(run)
                best[name] = result.best.prompt
        before = self._score(eval_fn, initial, train_data)
        after = self._score(eval_fn, {**initial, **best}, train_data)
        return PromptOptimizerOutput(optimized_prompts=best, initial_eval_score=before, final_eval_score=after)

    def _one(
        self, ref: ModelRef, writer: RewriterRef, prompt: str, data: Dataset, run: TrackedRun | None
    ) -> OptimizeResult:
        """One prompt through the loop, recorded in `run` (None: no record)."""
        steps = _Steps(ref, writer, self.config)
        recorder = Recorder(run) if run is not None else None
        optimizer = PMPO(
            config=self.config,
            steps=steps,
            on_candidate=recorder.candidate if recorder else None,
            on_iteration=recorder.iteration if recorder else None,
        )
        result = optimizer.optimize(prompt, data)
        if recorder is not None:
            recorder.finish(result, data.name, heldout=None, register=False, cost=result.cost)
        log.info("pmpo: %s loss %.4f -> %.4f", data.name, result.initial.loss, result.best.loss)
        return result

    def _chosen(self, target_prompts: dict[str, str]) -> list[str]:
        if self.prompts is None:
            return list(target_prompts)
        unknown = [n for n in self.prompts if n not in target_prompts]
        if unknown:
            raise PmpoError(
                f"PmpoOptimizer(prompts=...): {', '.join(unknown)} not among the prompts given "
                f"({', '.join(target_prompts)})"
            )
        return list(self.prompts)

    def _params(self, writer: RewriterRef) -> dict[str, Any]:
        """pmpo's settings as `pmpo.`-prefixed params, beside MLflow's own (optimizer, num_prompts, ...)."""
        settings = {
            "model": self.model.model_dump(mode="json"),
            "scoring": self.scoring.model_dump(mode="json"),
            **self.config.model_dump(mode="json"),
            "rewriter": self.rewriter.model_dump(mode="json"),
            "description": self.description,
        }
        return {**flatten(settings, "pmpo."), "pmpo.rewriter.identity": writer.identity}

    def _tags(self, ref: ModelRef, writer: RewriterRef, data: Dataset, name: str, placement: str) -> dict[str, str]:
        return {
            **record_tags(ref, writer, data, data),
            "pmpo.prompt_name": name,
            # How the application must render the registered prompt to get the loss pmpo measured.
            "pmpo.placement": placement,
            "pmpo.task_description": self.description,
        }

    def _child(self, parent: TrackedRun, name: str) -> TrackedRun:
        """A run for one of several prompts, under MLflow's (the settings are the parent's params)."""
        return active.child_run(parent, f"pmpo {name}", {"pmpo.prompt_name": name})

    def _score(self, eval_fn: _EvalFunc | None, prompts: dict[str, str], rows: list[dict[str, Any]]) -> float | None:
        """MLflow's mean score of `prompts` on the rows (None: evaluate off, no eval_fn, or no scorers)."""
        if not self.evaluate or eval_fn is None or not rows:
            return None
        scores = [r.score for r in eval_fn(prompts, rows) if r.score is not None]
        return fmean(scores) if scores else None


class _Steps(LocalSteps):
    """The loop's steps in this process, on pmpo's process-wide model, scorer and rewriter (tasks.models,
    tasks.rewriters): a served model scores through its server and rewrites through its chat endpoint, and a
    second `optimize` in one process reuses the loaded model and the scorer's memo."""

    def __init__(self, ref: ModelRef, writer: RewriterRef, config: OptimizerConfig):
        # Not LocalSteps.__init__: that one wants loaded weights, which a served model does not have here.
        self.config = config
        self.scorer = scorer(ref)
        self.rewriter = rewriter(writer)
        self.model_identity = ref.identity
        self._ref, self._writer = ref, writer

    def usage(self) -> UsageSnapshot:
        """The work of the scored model and, when another, the rewriter, in this process."""
        return model_usage(self._ref) + rewriter_usage(self._writer, self._ref)
