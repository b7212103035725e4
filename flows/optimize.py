"""The optimisation flow: load and split the data, run the PMPO loop as cached tasks, check the result on
held-out data, and record everything in MLflow. Killed and started again, it resumes the same run.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.cluster import loss_fan_out
from flows.config import ConfigError, OptimizeConfig, RewriterConfig, config_hash
from flows.cost import CostSummary, cost_summary, run_cost
from flows.record import Recorder, flatten
from flows.steps import PrefectSteps, WorkLog
from pmpo.scoring.context_budget import check_fits
from pmpo.data import Dataset, Split
from pmpo.evaluation.heldout import Evaluation, compare
from pmpo.loop.optimizer import PMPO
from pmpo.loop.steps import unit_mode
from pmpo.rewriting.requests import choose_template
from pmpo.loop.result import Candidate, Iteration
from pmpo.evaluation.stats import Interval
from pmpo.text.template import normalized, prompt_variables
from pmpo.models.usage import Meter
from tasks import steps as t
from tasks import tracking
from tasks.environment import code_version, shown_tracking_uri
from tasks.models import ModelRef, is_loaded, loaded, model_ref, text_side
from tasks.rewriters import RewriterRef, chat_ref, local_ref, same_as
from tasks.progress import Event, report

REGISTRY_PREFIX = "prompts:/"


# Config fields that change no number, so not which run a config continues: where the losses are computed.
RUN_NEUTRAL = frozenset({"task_runner"})


class CandidateRow(BaseModel):
    """A candidate as the summary and the MLflow table show it."""

    id: str
    parent_id: str | None
    iteration: int
    origin: Literal["initial", "rewrite", "segment_removal"]
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
    heldout: HeldOut | None
    prompt_name: str | None
    prompt_version: int | None
    resumed: bool
    work: Work
    candidates: list[CandidateRow]
    cost: CostSummary | None = None  # wall time and model work this process spent, by step and iteration


@flow(name="optimize-prompt")
def optimize_prompt(config: OptimizeConfig = OptimizeConfig()) -> OptimizeSummary:
    """Optimise a prompt with PMPO on a dataset; every candidate goes to MLflow, the best to the registry."""
    if config.prompt and config.prompt.startswith(REGISTRY_PREFIX):  # the run is keyed by the text it starts from
        config = config.model_copy(update={"prompt": tracking.load_registered_prompt(config.prompt)})
    elif config.prompt:  # a chat prompt however its JSON was written: the same messages are the same candidate
        config = config.model_copy(update={"prompt": normalized(config.prompt)})
    dataset, split = _load(config)
    prompt = config.prompt or dataset.default_prompt
    if not prompt:
        raise ConfigError(f"dataset {dataset.name!r} has no default prompt: give one (prompt / --prompt)")
    task = config.task or dataset.name
    ref = model_ref(config.model.settings(), config.scorer())
    check_fits(text_side(ref), prompt, dataset, config.scoring.mc_objective)  # before a run exists to leave empty
    writer = rewriter_ref(config.rewriter, ref)  # a chat endpoint is checked here: key, server, model name
    run = tracking.start_run(
        config.experiment or task,
        run_key=run_key(config, ref, dataset, writer),
        run_name=f"{task} {flow_run.get_name() or ''}".strip(),
        params={
            **flatten(config.model_dump(mode="json", exclude=RUN_NEUTRAL)), "prompt": prompt, "train.n": len(split.train),
            "rewriter.identity": writer.identity,
        },  # fmt: skip
        tags={**_tags(ref, dataset, split), **_runner_tags(config), "pmpo.rewriter_identity": writer.identity},
    )
    try:
        tracking.log_text(run, config.model_dump_json(indent=2), "config.json")
        with loss_fan_out(config.task_runner) as fan_out:
            steps = PrefectSteps(ref, config.optimizer(), writer, fan_out=fan_out)
            recorder = Recorder(run)
            optimizer = PMPO(
                config=config.optimizer(), steps=steps, on_candidate=recorder.candidate, on_iteration=_noting(recorder)
            )
            result = optimizer.optimize(prompt, split.train)
        tracking.set_tags(run, size_choices(config, writer))
        meter = Meter(steps.usage)
        with meter.step("evaluate"):
            heldout = _heldout(config, split, result.initial.prompt, result.best.prompt, steps)
        heldout_cost = meter.take() if heldout is not None else None
        prompt_name, version = recorder.finish(
            result, task, heldout, config.register_prompt, cost=run_cost(result, heldout_cost)
        )
    except BaseException:
        tracking.finish(run, "FAILED")  # an identical command resumes a failed run, as it does a killed one
        raise
    tracking.finish(run)
    return OptimizeSummary(
        run_id=run.run_id,
        experiment=run.experiment,
        experiment_id=run.experiment_id,
        tracking_uri=shown_tracking_uri(),
        run_url_path=run.url_path,
        task=task,
        model_identity=ref.identity,
        rewriter_identity=writer.identity,
        dataset_fingerprint=dataset.fingerprint,
        initial_prompt=result.initial.prompt,
        best_prompt=result.best.prompt,
        initial_loss=result.initial.loss,
        best_loss=result.best.loss,
        n_candidates=len(result.candidates),
        n_iterations=len(result.iterations),
        heldout=_heldout_summary(heldout, config.seed),
        prompt_name=prompt_name,
        prompt_version=version,
        resumed=run.resumed,
        work=_work(steps.work),
        candidates=[_row(c, c.id in recorder.selected) for c in result.candidates],
        cost=cost_summary(result, heldout_cost),
    )


def _noting(recorder: Recorder):
    """Record an iteration, then tell progress listeners how it went."""

    def on_iteration(it: Iteration) -> None:
        recorder.iteration(it)
        outcome = "new incumbent" if it.improved else "incumbent kept"
        best = f"best new {it.best_candidate_loss:.4f}" if it.n_candidates else "no new candidates"
        scored = f"{it.n_candidates} candidates" + (f" ({it.n_dropped} dropped early)" if it.n_dropped else "")
        report(Event("note", f"iteration {it.iteration}: {scored}, {best}, {outcome} (loss {it.incumbent_loss:.4f})"))

    return on_iteration


def run_key(config: OptimizeConfig, ref: ModelRef, dataset: Dataset, writer: RewriterRef | None = None) -> str:
    """Same config, model, rewriter and data -> same key: how a rerun finds the run it continues."""
    text = f"{config_hash(config, RUN_NEUTRAL)}:{ref.identity}:{ref.dtype}:{dataset.fingerprint}"
    if writer is not None and writer.backend != "same":  # the scored model's own runs keep their old keys
        text += f":{writer.identity}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _runner_tags(config: OptimizeConfig) -> dict[str, str]:
    """Where this process computes losses: tags, not params, since a resumed run may compute them elsewhere."""
    r = config.task_runner
    where = "in-process" if r.kind == "local" else (r.address or f"local cluster {r.n_workers}x{r.threads_per_worker}")
    return {"pmpo.task_runner": r.kind, "pmpo.task_runner.where": where}


def rewriter_ref(config: RewriterConfig, model: ModelRef) -> RewriterRef:
    """The rewriter the config names: the scored model, another in-process model, or a chat endpoint."""
    if config.backend == "local":
        return local_ref(config.model_settings())
    if config.backend == "openai":
        return chat_ref(config.chat_settings())
    return same_as(model, config.n_params)


def size_choices(config: OptimizeConfig, writer: RewriterRef) -> dict[str, str]:
    """The template and units the rewriter's size chose, as tags; none when the size is unknown here.

    An in-process rewriter's size is known only once loaded: a fully cached rerun loads nothing, and its run
    (the same one, resumed) holds these tags already.
    """
    if writer.model is not None and not is_loaded(writer.model):
        return {}
    n_params = loaded(writer.model).n_params if writer.model is not None else writer.chat.n_params
    small = config.rewrite.settings().small_model_params
    return {
        "pmpo.rewrite_template": choose_template(config.rewrite.template, n_params, small),
        "pmpo.units": unit_mode(config.units, n_params, small) if config.masking else "off",
    }


def _load(config: OptimizeConfig) -> tuple[Dataset, Split]:
    d = config.data
    return t.load_split(
        d.source, format=d.format, columns=d.columns, kind=d.kind, limit=d.limit, hub_config=d.hub_config,
        hub_split=d.hub_split, seed=config.seed, train_fraction=config.train_fraction, train_cap=config.train_cap,
        variables=prompt_variables(config.prompt or ""),
    )  # fmt: skip


def _tags(ref: ModelRef, dataset: Dataset, split: Split) -> dict[str, str]:
    return {
        "pmpo.model_identity": ref.identity,
        "pmpo.dataset_fingerprint": dataset.fingerprint,
        "pmpo.train_fingerprint": split.train.fingerprint,
        "pmpo.code_version": code_version(),
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
    }


def _heldout(config: OptimizeConfig, split: Split, initial: str, final: str, steps: PrefectSteps) -> tuple[Evaluation, Evaluation] | None:
    """Both prompts on the held-out split, capped at eval.max_examples."""
    if split.test is None:
        return None
    data = config.eval.examples(split.test)
    return tuple(steps.evaluate(p, data, which, config.eval) for which, p in (("initial", initial), ("final", final)))


def _heldout_summary(heldout: tuple[Evaluation, Evaluation] | None, seed: int) -> HeldOut | None:
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


def _work(log: WorkLog) -> Work:
    steps = sorted({r.step for r in log.runs})
    return Work(
        computed={s: log.count(s, cached=False) for s in steps},
        cached={s: log.count(s, cached=True) for s in steps},
        loss_computed_by_iteration={
            i: log.count("loss", cached=False, iteration=i) for i in sorted({r.iteration for r in log.runs if r.step == "loss"})
        },
    )


def _row(c: Candidate, selected: bool) -> CandidateRow:
    return CandidateRow(
        id=c.id, parent_id=c.parent_id, iteration=c.iteration, origin=c.origin, prompt=c.prompt,
        loss=c.loss, loss_per_token=c.loss_per_token, n_examples=c.n_examples,
        dropped=c.dropped, selected=selected,
    )  # fmt: skip
