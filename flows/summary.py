"""What an optimisation flow run returns: its outcome, where its record is, what it computed and what it took from
the cache, every candidate, and the held-out check with its intervals. Shaped here from the run's parts, so the
flow only composes; the CLI shows it and `--output` writes it as JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from flows.cost import CostSummary, cost_summary
from flows.steps import WorkLog
from pmpo.data import Dataset
from pmpo.evaluation.heldout import Evaluation, compare
from pmpo.evaluation.stats import Interval
from pmpo.loop.result import Candidate, OptimizeResult
from pmpo.models.usage import Cost
from tasks.environment import shown_tracking_uri
from tasks.mlflow.runs import TrackedRun
from tasks.models import ModelRef
from tasks.rewriters import RewriterRef


class CandidateRow(BaseModel):
    """A candidate as the summary and the MLflow table show it."""

    id: str
    parent_id: str | None
    iteration: int
    origin: Literal["initial", "rewrite", "segment_removal", "demonstrations"]
    prompt: str
    loss: float
    loss_per_token: float
    n_examples: int
    dropped: bool  # racing stopped scoring it after n_examples training examples
    selected: bool


class HeldOut(BaseModel):
    """The initial and the final prompt on held-out examples (never seen by the optimiser).

    Each delta is final - initial on the same examples with its paired bootstrap 95% interval: 50 examples
    leave an accuracy several points of noise, and the interval says how many.
    """

    n_examples: int
    initial_loss: float
    final_loss: float
    initial_accuracy: float | None
    final_accuracy: float | None
    initial_option_accuracy: float | None = None  # multiple choice, lm-eval `acc`
    final_option_accuracy: float | None = None
    initial_option_accuracy_norm: float | None = None  # multiple choice, lm-eval `acc_norm` (per byte)
    final_option_accuracy_norm: float | None = None
    delta_loss: Interval | None = None
    delta_accuracy: Interval | None = None
    delta_option_accuracy: Interval | None = None
    delta_option_accuracy_norm: Interval | None = None


class Work(BaseModel):
    """What this process computed and what it took from the task cache, by step."""

    computed: dict[str, int]
    cached: dict[str, int]
    loss_computed_by_iteration: dict[int, int]


class OptimizeSummary(BaseModel):
    """The outcome of one optimisation flow run, and where its record is."""

    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    run_url_path: str  # append to the MLflow UI's address
    task: str
    model_identity: str
    rewriter_identity: str | None = None  # who wrote the rewrites: the scored model unless `rewriter` says otherwise
    dataset_fingerprint: str
    initial_prompt: str
    best_prompt: str
    initial_loss: float
    best_loss: float
    n_candidates: int
    n_iterations: int
    stopped_early: bool = False  # `patience` iterations in a row accepted nothing, so the loop ended early
    stop_reason: str = "iterations"  # iterations (all ran), patience, or budget (spent: rerun with more to go on)
    heldout: HeldOut | None
    prompt_name: str | None
    prompt_version: int | None
    resumed: bool
    work: Work
    candidates: list[CandidateRow]
    cost: CostSummary | None = None  # wall time and model work this process spent, by step and iteration
    rejected: dict[str, int] = {}  # rewriter replies dropped over the run, by reason (only reasons that occurred)


def summarize(
    run: TrackedRun,
    task: str,
    model: ModelRef,
    rewriter: RewriterRef,
    dataset: Dataset,
    result: OptimizeResult,
    heldout: tuple[Evaluation, Evaluation] | None,
    *,
    seed: int,
    registered: tuple[str | None, int | None],
    selected: set[str],
    work: WorkLog,
    heldout_cost: Cost | None,
) -> OptimizeSummary:
    """The summary of a finished run: `registered` is the (name, version) of its prompt, `selected` the ids that
    were the incumbent after some iteration, `work` what this process ran."""
    prompt_name, version = registered
    return OptimizeSummary(
        run_id=run.run_id,
        experiment=run.experiment,
        experiment_id=run.experiment_id,
        tracking_uri=shown_tracking_uri(),
        run_url_path=run.url_path,
        task=task,
        model_identity=model.identity,
        rewriter_identity=rewriter.identity,
        dataset_fingerprint=dataset.fingerprint,
        initial_prompt=result.initial.prompt,
        best_prompt=result.best.prompt,
        initial_loss=result.initial.loss,
        best_loss=result.best.loss,
        n_candidates=len(result.candidates),
        n_iterations=len(result.iterations),
        stopped_early=result.stopped_early,
        stop_reason=result.stop_reason,
        heldout=heldout_summary(heldout, seed),
        prompt_name=prompt_name,
        prompt_version=version,
        resumed=run.resumed,
        work=work_summary(work),
        candidates=[candidate_row(c, c.id in selected) for c in result.candidates],
        cost=cost_summary(result, heldout_cost),
        rejected=rejected_total(result),
    )


def rejected_total(result: OptimizeResult) -> dict[str, int]:
    """Rewriter replies dropped over all iterations, by reason; reasons that never occurred left out."""
    total: dict[str, int] = {}
    for it in result.iterations:
        for reason, count in it.rejected.items():
            total[reason] = total.get(reason, 0) + count
    return {reason: count for reason, count in total.items() if count}


def heldout_summary(heldout: tuple[Evaluation, Evaluation] | None, seed: int) -> HeldOut | None:
    """Both prompts' held-out numbers and each change with its paired bootstrap interval (None: nothing held out)."""
    if heldout is None:
        return None
    initial, final = heldout
    delta = compare(initial, final, seed=seed)  # the same seed as the MLflow metrics: the same intervals
    return HeldOut(
        n_examples=initial.n_examples,
        initial_loss=initial.loss,
        final_loss=final.loss,
        initial_accuracy=initial.accuracy,
        final_accuracy=final.accuracy,
        initial_option_accuracy=initial.option_accuracy,
        final_option_accuracy=final.option_accuracy,
        initial_option_accuracy_norm=initial.option_accuracy_norm,
        final_option_accuracy_norm=final.option_accuracy_norm,
        delta_loss=delta.loss,
        delta_accuracy=delta.accuracy,
        delta_option_accuracy=delta.option_accuracy,
        delta_option_accuracy_norm=delta.option_accuracy_norm,
    )


def work_summary(log: WorkLog) -> Work:
    """Steps computed and steps taken from the cache, by step, and the loss steps computed in each iteration."""
    steps = sorted({r.step for r in log.runs})
    return Work(
        computed={s: log.count(s, cached=False) for s in steps},
        cached={s: log.count(s, cached=True) for s in steps},
        loss_computed_by_iteration={
            i: log.count("loss", cached=False, iteration=i)
            for i in sorted({r.iteration for r in log.runs if r.step == "loss"})
        },
    )


def candidate_row(c: Candidate, selected: bool) -> CandidateRow:
    """A candidate as the summary shows it."""
    return CandidateRow(
        id=c.id,
        parent_id=c.parent_id,
        iteration=c.iteration,
        origin=c.origin,
        prompt=c.prompt,
        loss=c.loss,
        loss_per_token=c.loss_per_token,
        n_examples=c.n_examples,
        dropped=c.dropped,
        selected=selected,
    )
