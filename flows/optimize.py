"""The optimisation flow: load and split the data, run the PMPO loop as cached tasks, check the result on
held-out data, and record everything in MLflow. Killed and started again, it resumes the same run.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.cluster import loss_fan_out
from flows.config import ConfigError, OptimizeConfig
from flows.cost import run_cost
from flows.record import Recorder, flatten
from flows.steps import PrefectSteps, load_data
from flows.summary import OptimizeSummary, summarize
from pmpo.data import Split
from pmpo.evaluation.heldout import Evaluation
from pmpo.loop.optimizer import PMPO
from pmpo.loop.result import Iteration
from pmpo.loop.steps import unit_mode
from pmpo.models.usage import Meter
from pmpo.rewriting.requests import choose_template
from pmpo.scoring.context_budget import check_fits
from pmpo.text.rendering import placed
from pmpo.text.template import normalized
from tasks.environment import code_version
from tasks.identity import RUN_NEUTRAL, record_tags, run_key
from tasks.mlflow import links, prompts, runs, writes
from tasks.models import ModelRef, is_loaded, loaded, model_ref, text_side
from tasks.progress import Event, report
from tasks.rewriters import RewriterRef, rewriter_ref

REGISTRY_PREFIX = "prompts:/"


@flow(name="optimize-prompt")
def optimize_prompt(config: OptimizeConfig = OptimizeConfig()) -> OptimizeSummary:
    """Optimise a prompt with PMPO on a dataset; every candidate goes to MLflow, the best to the registry."""
    if config.prompt and config.prompt.startswith(REGISTRY_PREFIX):  # the run is keyed by the text it starts from
        config = config.model_copy(update={"prompt": prompts.load_registered_prompt(config.prompt)})
    elif config.prompt:  # a chat prompt however its JSON was written: the same messages are the same candidate
        config = config.model_copy(update={"prompt": normalized(config.prompt)})
    dataset, split = load_data(config, config.prompt or "")
    prompt = config.prompt or dataset.default_prompt
    if not prompt:
        raise ConfigError(f"dataset {dataset.name!r} has no default prompt: give one (prompt / --prompt)")
    task = config.task or dataset.name
    ref = model_ref(config.model, config.scoring)
    check_fits(text_side(ref), prompt, dataset, config.scoring.mc_objective)  # before a run exists to leave empty
    writer = rewriter_ref(config.rewriter, ref)  # a chat endpoint is checked here: key, server, model name
    run = runs.start_run(
        config.experiment or task,
        run_key=run_key(config, ref, dataset, writer),
        run_name=f"{task} {flow_run.get_name() or ''}".strip(),
        params={
            **flatten(config.model_dump(mode="json", exclude=RUN_NEUTRAL)),
            "prompt": prompt,
            "train.n": len(split.train),
            "rewriter.identity": writer.identity,
        },
        tags={
            **record_tags(ref, writer, dataset, split.train),
            **_tags(),
            **_runner_tags(config),
            "pmpo.task_description": dataset.description[:5000],  # --description, data.description, <stem>.meta.json
        },
    )
    try:
        writes.log_text(run, config.model_dump_json(indent=2), "config.json")
        links.log_datasets(run, {"train": split.train, **({"heldout": split.test} if split.test is not None else {})})
        with loss_fan_out(config.task_runner) as fan_out:
            steps = PrefectSteps(ref, config, writer, fan_out=fan_out)
            recorder = Recorder(run)
            optimizer = PMPO(
                config=config, steps=steps, on_candidate=recorder.candidate, on_iteration=_noting(recorder)
            )
            result = optimizer.optimize(prompt, split.train)
        runs.set_tags(run, {**size_choices(config, writer), "pmpo.stop_reason": result.stop_reason})
        meter = Meter(steps.usage)
        with meter.step("evaluate"):
            heldout = _heldout(config, split, result.initial.prompt, result.best.prompt, steps)
        heldout_cost = meter.take() if heldout is not None else None
        placement = placed(result.best.prompt, text_side(ref).placement)
        prompt_name, version = recorder.finish(
            result,
            task,
            heldout,
            config.register_prompt,
            cost=run_cost(result, heldout_cost),
            placement=placement,
            model_config=version_model_config(ref, placement),
        )
    except BaseException:
        runs.finish(run, "FAILED")  # an identical command resumes a failed run, as it does a killed one
        raise
    runs.finish(run)
    return summarize(
        run,
        task,
        ref,
        writer,
        dataset,
        result,
        heldout,
        seed=config.seed,
        registered=(prompt_name, version),
        selected=recorder.selected,
        work=steps.work,
        heldout_cost=heldout_cost,
    )


def version_model_config(ref: ModelRef, placement: str) -> dict:
    """The registered version's MLflow model config: the model the prompt was optimised for, how it is placed."""
    settings = ref.settings
    served = settings.backend == "openai"
    return {
        "model_name": settings.model if served and settings.model else ref.identity,
        "provider": f"openai-compatible {settings.base_url}" if served else "transformers",
        "extra_params": {"pmpo.identity": ref.identity, "pmpo.placement": placement, "pmpo.dtype": ref.dtype},
    }


def _noting(recorder: Recorder):
    """Record an iteration, then tell progress listeners how it went."""

    def on_iteration(it: Iteration) -> None:
        recorder.iteration(it)
        outcome = "new incumbent" if it.improved else "incumbent kept"
        best = f"best new {it.best_candidate_loss:.4f}" if it.n_candidates else "no new candidates"
        scored = f"{it.n_candidates} candidates" + (f" ({it.n_dropped} dropped early)" if it.n_dropped else "")
        report(Event("note", f"iteration {it.iteration}: {scored}, {best}, {outcome} (loss {it.incumbent_loss:.4f})"))

    return on_iteration


def _runner_tags(config: OptimizeConfig) -> dict[str, str]:
    """Where this process computes losses: tags, not params, since a resumed run may compute them elsewhere."""
    r = config.task_runner
    where = "in-process" if r.kind == "local" else (r.address or f"local cluster {r.n_workers}x{r.threads_per_worker}")
    return {"pmpo.task_runner": r.kind, "pmpo.task_runner.where": where}


def size_choices(config: OptimizeConfig, writer: RewriterRef) -> dict[str, str]:
    """The template and units the rewriter's size chose, as tags; none when the size is unknown here.

    An in-process rewriter's size is known only once loaded: a fully cached rerun loads nothing, and its run
    (the same one, resumed) holds these tags already.
    """
    if writer.model is not None and not is_loaded(writer.model):
        return {}
    n_params = loaded(writer.model).n_params if writer.model is not None else writer.chat.n_params
    small = config.rewrite.small_model_params
    return {
        "pmpo.rewrite_template": choose_template(config.rewrite.template, n_params, small),
        "pmpo.units": unit_mode(config.units, n_params, small) if config.masking else "off",
    }


def _tags() -> dict[str, str]:
    """The code that ran and the flow run that ran it."""
    return {"pmpo.code_version": code_version(), "prefect.flow_run_id": str(flow_run.get_id() or "")}


def _heldout(
    config: OptimizeConfig, split: Split, initial: str, final: str, steps: PrefectSteps
) -> tuple[Evaluation, Evaluation] | None:
    """Both prompts on the held-out split, capped at eval.max_examples."""
    if split.test is None:
        return None
    data = config.eval.examples(split.test, config.seed)
    return tuple(steps.evaluate(p, data, which, config.eval) for which, p in (("initial", initial), ("final", final)))
