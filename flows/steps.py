"""The PMPO loop's steps as Prefect task runs: `PMPO(steps=PrefectSteps(...))` is the flow's optimizer.

Same functions as pmpo's LocalSteps, called through cached tasks; so the flow and `pmpo.optimize` give the
same candidates for the same seed, and a rerun takes every step it already computed from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from flows.cluster import LossFanOut
from flows.config import EvalConfig, EvaluateConfig, OptimizeConfig
from pmpo.data.examples import Dataset
from pmpo.data.split import Split
from pmpo.evaluation.heldout import Evaluation
from pmpo.loop.optimizer import OptimizerConfig
from pmpo.loop.result import Candidate, SegmentEffect
from pmpo.loop.steps import Rewrites
from pmpo.models.usage import UsageSnapshot
from pmpo.scoring.loss import LossMatrix
from pmpo.text.template import prompt_variables
from tasks import steps as t
from tasks.caching import with_storage
from tasks.models import ModelRef
from tasks.models import usage as model_usage
from tasks.progress import Event, report
from tasks.rewriters import RewriterRef, same_as
from tasks.rewriters import usage as rewriter_usage
from tasks.store import check_writable, write_failure


def load_data(config: OptimizeConfig | EvaluateConfig, prompt: str, *, as_task: bool = True) -> tuple[Dataset, Split]:
    """The run's dataset and its seeded split, as `optimize` and `evaluate` both read it (`prompt`'s variables say
    which columns fill them), so an evaluation's held-out part is the optimisation run's. `as_task` False: a plain
    call, outside any flow (a dry run records nothing in Prefect)."""
    d = config.data
    load = t.load_split if as_task else t.load_split.fn
    return load(
        d.source,
        format=d.format,
        columns=d.columns,
        kind=d.kind,
        limit=d.limit,
        hub_config=d.hub_config,
        hub_split=d.hub_split,
        description=d.description,
        seed=config.seed,
        train_fraction=config.train_fraction,
        train_cap=config.train_cap,
        variables=prompt_variables(prompt),
    )


@dataclass(frozen=True)
class StepRun:
    """One step the loop asked for, and whether Prefect served it from the cache."""

    step: str  # loss | mask | rewrite | demos | select | evaluate
    iteration: int
    label: str
    cached: bool


@dataclass
class WorkLog:
    """Every step this process ran for the flow, in order (what was computed, what was reused)."""

    runs: list[StepRun] = field(default_factory=list)

    def count(self, step: str, *, cached: bool, iteration: int | None = None) -> int:
        """How many `step` runs were (not) cached, in one iteration or all."""
        return sum(
            1
            for r in self.runs
            if r.step == step and r.cached == cached and (iteration is None or r.iteration == iteration)
        )


class PrefectSteps:
    """pmpo's Steps protocol over Prefect tasks with results persisted under the data directory."""

    def __init__(
        self,
        model: ModelRef,
        config: OptimizerConfig,
        rewriter: RewriterRef | None = None,
        *,
        fan_out: LossFanOut | None = None,
    ):
        self.model, self.config = model, config
        self.rewriter = rewriter or same_as(model)
        self.fan_out = fan_out  # None: each loss step is one task run in this process
        self.model_identity = model.identity
        self.work = WorkLog()
        # bound now: the data directory may differ between flow runs in one process
        self._loss = with_storage(t.loss_matrix)
        self._mask = with_storage(t.mask_segments)
        self._rewrite = with_storage(t.propose_rewrites)
        self._evaluate = with_storage(t.evaluate_prompt)

    def losses(self, prompts: Sequence[str], train: Dataset, iteration: int) -> LossMatrix:
        """Per-example losses of `prompts` on the training set (one task run: `loss iter=2 13x40`)."""
        label = t.loss_label(prompts, train, iteration)
        if self.fan_out is not None:
            return self._sharded(label, prompts, train, iteration)
        return self._run(
            "loss",
            iteration,
            label,
            self._loss,
            model=self.model,
            prompts=list(prompts),
            data=train,
            iteration=iteration,
        )

    def _sharded(self, label: str, prompts: Sequence[str], train: Dataset, iteration: int) -> LossMatrix:
        """The loss step as one task run per shard of prompts on the cluster, joined in the prompts' order."""
        report(Event("start", label))
        shards = self.fan_out.shards(prompts)
        submit = self.fan_out.submit
        futures = [submit(self._loss, model=self.model, prompts=s, data=train, iteration=iteration) for s in shards]
        parts = [_value(f.result) for f in futures]  # raises the first failed shard's exception
        cached = [f.state.name == "Cached" for f in futures]
        for s, hit in zip(shards, cached):
            self.work.runs.append(StepRun("loss", iteration, t.loss_label(s, train, iteration), hit))
        report(Event("done", label, cached=all(cached)))
        return LossMatrix.stack(parts)

    def segments(
        self, prompt: str, prompt_loss: float, train: Dataset, iteration: int
    ) -> tuple[list[str], tuple[SegmentEffect, ...]]:
        """Units of `prompt` and dL of masking each (one task run: `mask iter=2`)."""
        c = self.config
        return self._run(
            "mask",
            iteration,
            t.segments_label(iteration),
            self._mask,
            model=self.model,
            rewriter=self.rewriter,
            prompt=prompt,
            prompt_loss=prompt_loss,
            data=train,
            iteration=iteration,
            units=c.units,
            max_units=c.max_units,
            seed=c.seed,
            small_model_params=c.rewrite.small_model_params,
            chat_message=c.chat_message,
            balance_labels=c.balance_labels,
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
        """Rewrite variants on the hard examples (one task run: `rewrite iter=2 k=3`)."""
        return self._run(
            "rewrite",
            iteration,
            t.rewrites_label(iteration, hard),
            self._rewrite,
            model=self.model,
            rewriter=self.rewriter,
            incumbent=incumbent,
            data=train,
            hard=list(hard),
            effects=tuple(effects),
            iteration=iteration,
            seen=seen,
            rewrite=self.config.rewrite,
            seed=self.config.seed,
            chat_message=self.config.chat_message,
        )

    def demonstrations(
        self, incumbent: str, train: Dataset, losses: Sequence[float], iteration: int, seen: frozenset[str]
    ) -> Rewrites:
        """The incumbent with training examples as demonstrations (one task run: `demos iter=2`)."""
        return self._run(
            "demos",
            iteration,
            t.demonstrations_label(iteration),
            t.propose_demonstrations,
            model=self.model,
            incumbent=incumbent,
            data=train,
            losses=list(losses),
            iteration=iteration,
            seen=seen,
            demonstrations=self.config.demonstrations,
            seed=self.config.seed,
            chat_message=self.config.chat_message,
        )

    def select(self, incumbent: Candidate, candidates: Sequence[Candidate], iteration: int) -> Candidate:
        """The new incumbent (a task run, so the Prefect timeline shows each decision)."""
        return self._run(
            "select",
            iteration,
            t.select_label(iteration),
            t.select_incumbent,
            incumbent=incumbent,
            candidates=list(candidates),
            iteration=iteration,
            selection=self.config.selection,
        )

    def evaluate(self, prompt: str, data: Dataset, which: str, settings: EvalConfig) -> Evaluation:
        """Loss (and accuracy) of one prompt on held-out data (not a loop step; cached the same way)."""
        return self._run(
            "evaluate",
            -1,
            t.evaluate_label(which, data),
            self._evaluate,
            model=self.model,
            prompt=prompt,
            data=data,
            which=which,
            generate=settings.generate,
            max_new_tokens=settings.max_new_tokens,
            match=settings.match,
        )

    def usage(self) -> UsageSnapshot:
        """The work the model and the rewriter did in this process and on the cluster's workers (zeros when every
        step came from the cache)."""
        local = model_usage(self.model) + rewriter_usage(self.rewriter, self.model)
        return local if self.fan_out is None else local + self.fan_out.usage(self.model)

    def _run(self, step: str, iteration: int, label: str, task: Any, /, **kwargs: Any) -> Any:
        report(Event("start", label))
        state = task(**kwargs, return_state=True)
        value = _value(state.result)
        cached = state.name == "Cached"
        if not cached:  # its result went to the store, or Prefect only logged that it could not
            check_writable()
        self.work.runs.append(StepRun(step, iteration, label, cached))
        report(Event("done", label, cached=cached))
        return value


def _value(result: Callable[[], Any]) -> Any:
    """`result()` of a task run: its exception when it failed, one naming the result store when writing there failed."""
    try:
        return result()
    except OSError as exc:
        failed = write_failure(exc)
        if failed is None:
            raise
        raise failed from exc
