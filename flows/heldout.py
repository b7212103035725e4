"""The held-out check the nightly refresh and `compare` share: which data a prompt version is judged on, and
its numbers there.

Every version the nightly refresh registers carries the evaluation set-up it was judged on (data source, split,
model, eval settings) as a version tag, so a later comparison scores it on the same held-out examples. Versions
that `pmpo optimize` registered carry the id of their run instead, whose config.json says the same.

The nightly refresh judges each decision on its own draw from the test split (pmpo.evaluation.rotation), so it
reads the split (`pool`) and scores prompts on given examples (`evaluate_on`), keeping every per-example number.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

from flows.config import ConfigError, EvaluateConfig, OptimizeConfig
from flows.evaluate import evaluate_prompt
from flows.steps import PrefectSteps, load_data
from pmpo.data.examples import Dataset
from pmpo.evaluation.heldout import Evaluation
from pmpo.loop.optimizer import OptimizerConfig
from pmpo.scoring.context_budget import check_fits
from tasks.mlflow import prompts, queries
from tasks.models import model_ref, text_side

SETUP_TAG = "pmpo.evaluate_config"  # the version tag holding the evaluation set-up (EvaluateConfig JSON, no prompt)
RUN_TAG = "run_id"  # the optimisation run a version came from (tasks.mlflow.prompts.register_prompt sets it)


class Score(BaseModel):
    """One prompt on the held-out examples."""

    model_config = ConfigDict(frozen=True)

    n_examples: int
    loss: float  # mean over examples of the summed target cross-entropy: what decides
    loss_per_token: float
    accuracy: float | None  # generated answer is right (None: generation was off)
    option_accuracy: float | None = None  # multiple choice: the likeliest option is right (lm-eval `acc`)
    option_accuracy_norm: float | None = None  # the same per byte of the option (lm-eval `acc_norm`)

    @classmethod
    def of(cls, evaluation: Evaluation) -> "Score":
        """The summary numbers of an evaluation (its per-example values stay with it)."""
        return cls.model_validate({name: getattr(evaluation, name) for name in cls.model_fields})


def setup_of(optimize: OptimizeConfig) -> EvaluateConfig:
    """The held-out evaluation an optimisation run with this config does: same data, split, model, settings."""
    return EvaluateConfig(
        data=optimize.data,
        model=optimize.model,
        train_fraction=optimize.train_fraction,
        train_cap=optimize.train_cap,
        seed=optimize.seed,
        scoring=optimize.scoring,
        eval=optimize.eval,
    )


def setup_tag(setup: EvaluateConfig) -> str:
    """The set-up as a version tag value (compact JSON, without a prompt)."""
    return setup.model_dump_json(exclude={"prompt"})


def recorded_setup(version: prompts.PromptVersion) -> EvaluateConfig | None:
    """The set-up recorded with a version: its own tag, else its optimisation run's config; None if neither."""
    where = f"prompt {version.name!r} version {version.version}"
    if SETUP_TAG in version.tags:
        return _validated(json.loads(version.tags[SETUP_TAG]), f"{where}: tag {SETUP_TAG}")
    run_id = version.tags.get(RUN_TAG)
    config = queries.run_json(run_id, "config.json") if run_id else None
    if config is None:
        return None
    try:
        optimize = OptimizeConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(
            f"{where}: config.json of run {run_id} is not a valid config: {exc.errors()[0]['msg']}"
        ) from None
    return setup_of(optimize)


def score(setup: EvaluateConfig, prompt: str) -> Score:
    """`prompt` on the set-up's held-out examples (the evaluate flow: cached, so a prompt costs once per data)."""
    result = evaluate_prompt(setup.model_copy(update={"prompt": prompt}))
    return Score.model_validate(result.model_dump(include=set(Score.model_fields)))  # the summary's fields of that name


def pool(setup: EvaluateConfig, prompt: str) -> Dataset:
    """The test split of the set-up's data: every example an evaluation with it may draw (`prompt`'s variables say
    which columns fill them)."""
    dataset, split = load_data(setup, prompt)
    if split.test is None:
        raise ConfigError(f"dataset {dataset.name!r} has one example: nothing is left to hold out")
    return split.test


def evaluate_on(setup: EvaluateConfig, prompt: str, examples: Dataset) -> Evaluation:
    """`prompt` on exactly `examples`, with the set-up's model and eval settings (a cached task run)."""
    ref = model_ref(setup.model, setup.scoring)
    check_fits(text_side(ref), prompt, examples, setup.scoring.mc_objective)
    return PrefectSteps(ref, OptimizerConfig()).evaluate(prompt, examples, "prompt", setup.eval)


def _validated(values: dict, origin: str) -> EvaluateConfig:
    try:
        return EvaluateConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{origin}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
