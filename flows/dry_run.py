"""A dry run: the cost plan of an optimisation config, from the same data, split, prompt, model and rewriter the
flow would use, with rates from a short calibration. Plain functions, not a flow: a dry run creates no Prefect
flow run and no MLflow run.
"""

from __future__ import annotations

from flows.config import ConfigError, OptimizeConfig
from flows.managed import NightlyConfig, plan
from flows.steps import load_data
from pmpo.evaluation.heldout import answer_budget
from pmpo.loop.calibration import calibrate
from pmpo.loop.plan import CostPlan, Layout, cost_plan
from pmpo.rewriting.backends import local_model
from pmpo.text.template import normalized
from tasks.models import model_ref, scorer, text_side
from tasks.models import usage as model_usage
from tasks.rewriters import rewriter, rewriter_ref
from tasks.rewriters import usage as rewriter_usage

REGISTRY_PREFIX = "prompts:/"


def optimize_plan(config: OptimizeConfig, *, calibrated: bool = True) -> CostPlan:
    """What `optimize_prompt(config)` would cost at most; `calibrated`: also time a few batches and one rewrite
    request (loads the model, or asks the server) for the wall-time estimate."""
    prompt = config.prompt or ""
    if prompt.startswith(REGISTRY_PREFIX):  # reading the registry creates no run
        from tasks.mlflow import prompts

        prompt = prompts.load_registered_prompt(prompt)
    elif prompt:
        prompt = normalized(prompt)
    dataset, split = load_data(config, prompt, as_task=False)
    prompt = prompt or dataset.default_prompt
    if not prompt:
        raise ConfigError(f"dataset {dataset.name!r} has no default prompt: give one (prompt / --prompt)")
    ref = model_ref(config.model, config.scoring)
    writer = rewriter_ref(config.rewriter, ref)
    text = text_side(ref)
    rates, n_params, local, per_request = None, writer.chat.n_params if writer.chat else None, True, None
    if calibrated or writer.model is not None:  # an in-process rewriter's size (template, units) needs its weights
        sc, rw = scorer(ref), rewriter(writer)
        n_params, local = rw.n_params, local_model(rw) is not None
        served = getattr(sc, "served", None)
        per_request = served.facts().prompts_per_request if served is not None else None
        if calibrated:

            def usage():
                return model_usage(ref) + rewriter_usage(writer, ref)

            rates = calibrate(sc, rw, usage, text, prompt, split.train, config)
    heldout = config.eval.examples(split.test, config.seed) if split.test is not None else None
    answers = config.eval.max_new_tokens
    if answers is None and heldout is not None:
        answers = answer_budget(text, heldout)
    return cost_plan(
        text,
        prompt,
        split.train,
        config,
        layout=Layout.of(config.scoring, ref.device, per_request),
        scoring=config.scoring,
        rewriter_params=n_params,
        local_rewriter=local,
        heldout=heldout,
        generate=config.eval.generate,
        answer_tokens=answers or 0,
        rates=rates,
    )


def nightly_plan(config: NightlyConfig, *, calibrated: bool = True) -> list[tuple[str, CostPlan]]:
    """Each managed prompt's plan, from its configured initial prompt (production's text may be longer or shorter)."""
    return [
        (e.label, optimize_plan(e.managed().optimize_from(None), calibrated=calibrated)) for e in plan(config).entries
    ]
