"""The evaluation flow: one prompt (text, or a registered `prompts:/name@alias`) on a dataset's held-out split."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.config import ConfigError, EvaluateConfig
from flows.cost import CostRow, cost_row
from flows.steps import PrefectSteps, load_data
from pmpo.loop.optimizer import OptimizerConfig
from pmpo.models.usage import Meter
from pmpo.scoring.context_budget import check_fits
from tasks.mlflow import prompts
from tasks.models import model_ref, text_side

REGISTRY_PREFIX = "prompts:/"


class EvaluateSummary(BaseModel):
    """How one prompt does on held-out examples."""

    prompt: str
    prompt_source: str  # the text itself, or the registry URI it came from
    dataset: str
    model_identity: str
    n_examples: int
    loss: float
    loss_per_token: float
    accuracy: float | None
    option_accuracy: float | None
    option_accuracy_norm: float | None = None  # multiple choice, per byte of the option (lm-eval `acc_norm`)
    cost: CostRow | None = None  # wall time and model work of this evaluation (zeros when it came from the cache)


def resolve_prompt(prompt: str) -> str:
    """Prompt text: a registry URI is loaded from MLflow, anything else is the text itself."""
    return prompts.load_registered_prompt(prompt) if prompt.startswith(REGISTRY_PREFIX) else prompt


@flow(name="evaluate-prompt")
def evaluate_prompt(config: EvaluateConfig = EvaluateConfig()) -> EvaluateSummary:
    """Score a prompt on the held-out part of the same split an optimisation run with this seed used."""
    given = resolve_prompt(config.prompt) if config.prompt else ""  # its variables say which columns to read
    dataset, split = load_data(config, given)
    if split.test is None:
        raise ConfigError(f"dataset {dataset.name!r} has one example: nothing is left to hold out")
    source = config.prompt or dataset.default_prompt
    if not source:
        raise ConfigError(f"dataset {dataset.name!r} has no default prompt: give one (prompt / --prompt)")
    prompt = given or source
    ref = model_ref(config.model, config.scoring)
    check_fits(text_side(ref), prompt, split.test, config.scoring.mc_objective)
    steps = PrefectSteps(ref, OptimizerConfig())
    meter = Meter(steps.usage)
    with meter.step("evaluate"):
        result = steps.evaluate(prompt, config.eval.examples(split.test, config.seed), "prompt", config.eval)
    return EvaluateSummary(
        prompt=prompt,
        prompt_source=source,
        dataset=dataset.name,
        model_identity=ref.identity,
        n_examples=result.n_examples,
        loss=result.loss,
        loss_per_token=result.loss_per_token,
        accuracy=result.accuracy,
        option_accuracy=result.option_accuracy,
        option_accuracy_norm=result.option_accuracy_norm,
        cost=cost_row(meter.take()),
    )
