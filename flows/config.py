"""The flows' parameters: one validated pydantic model per flow (Prefect renders it as the run form).

A config file (YAML or TOML) holds the same fields: `pmpo optimize --config run.yaml`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pmpo.data import Dataset
from pmpo.data.loaders import BUILTIN_PREFIX, FORMATS, infer_format
from pmpo.errors import PmpoError
from pmpo.loss import ScorerSettings
from pmpo.models import DEFAULT_MODEL, ModelSettings
from pmpo.optimizer import OptimizerConfig
from pmpo.racing import RacingSettings
from pmpo.rewrite import RewriteSettings

DEMO_TASK = "builtin:sentiment"
_FILE_FORMATS = {"jsonl", "json", "bigbench", "csv", "tsv", "parquet"}


class ConfigError(PmpoError):
    """A config file or value is not valid; the message names the file and field."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a config file must not silently run the defaults.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the examples come from and how their columns map to ours."""

    source: str = Field(DEMO_TASK, description="a file (.jsonl .json .csv .tsv .parquet), builtin:<task> or a hub name")
    format: str | None = Field(None, description=f"override the format the suffix implies: {', '.join(FORMATS)}")
    columns: dict[str, str] = Field(default_factory=dict, description="our field -> your column, e.g. target: answer")
    kind: Literal["auto", "supervised", "preference", "multiple_choice"] = "auto"
    limit: int | None = Field(None, ge=1, description="read at most this many examples (builtin tasks: generate this many)")
    hub_config: str | None = None
    hub_split: str | None = None

    @field_validator("source")
    @classmethod
    def _file_exists(cls, source: str) -> str:
        # Checked here, before any flow starts, so a typo costs a one-line error and not a server start.
        if source.startswith(BUILTIN_PREFIX):
            return source
        looks_like_file = infer_format(source) in _FILE_FORMATS or source.startswith((".", "/", "~"))
        if looks_like_file and not Path(source).expanduser().exists():
            raise ValueError(f"data file {source!r} does not exist")
        return source

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        known = ("input", "target", "chosen", "rejected", "options", "aliases")
        unknown = sorted(set(columns) - set(known))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; map one of {', '.join(known)}")
        return columns


class ModelConfig(_Strict):
    """Which model scores (and, by default, rewrites) prompts."""

    spec: str = Field(DEFAULT_MODEL, description="built-in name, Hugging Face hub id, or local directory")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    placement: Literal["auto", "system", "user", "plain"] = "auto"
    revision: str | None = None

    def settings(self) -> ModelSettings:
        """As pmpo's ModelSettings."""
        return ModelSettings(**self.model_dump())


class RewriteConfig(_Strict):
    """The rewrite step: k hard examples, n variants each (the paper: 3 x 4)."""

    k: int = Field(3, ge=1, description="hard examples per iteration (one rewrite request each)")
    n: int = Field(4, ge=1, description="variants sampled per request")
    template: Literal["auto", "full", "short"] = "auto"
    max_new_tokens: int = Field(160, ge=8, description="tokens a rewrite may run to")
    temperature: float = Field(0.8, gt=0)

    def settings(self) -> RewriteSettings:
        """As pmpo's RewriteSettings."""
        return RewriteSettings(
            hard_k=self.k,
            n_variants=self.n,
            template=self.template,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
        )


class RacingConfig(_Strict):
    """Racing: score every candidate on a first slice of the training set, finish only the competitive ones."""

    # Off by default: a dropped candidate's recorded loss covers only its slice. benchmarks/bench_racing.py
    # measures how often racing changes the pick (never, with these settings, on the BIG-bench samples).
    enabled: bool = False
    first_slice: int = Field(10, ge=2, description="examples every candidate is scored on first")
    growth: float = Field(2.0, gt=1, description="each round scores the survivors on this many times more examples")
    margin: float = Field(3.0, ge=0, description="drop when worse than the leader by this many standard errors")

    def settings(self) -> RacingSettings:
        """As pmpo's RacingSettings."""
        return RacingSettings(**self.model_dump())


class EvalConfig(_Strict):
    """The held-out check of the initial and final prompt at the end of a run."""

    # Greedy answers on CPU are the slow part of evaluation; 50 examples keep it well under a minute with
    # SmolLM2 and still resolve accuracy to 2 points.
    max_examples: int | None = Field(50, ge=1, description="score at most this many held-out examples")
    generate: bool = Field(True, description="also generate answers and report accuracy (slower than loss)")
    max_new_tokens: int = Field(16, ge=1)
    # contains: chat models answer in sentences ("The review is positive."), which exact match calls wrong.
    match: Literal["exact", "contains"] = Field(
        "contains", description="exact: the reply's first line is the answer; contains: the reply names it and no other label"
    )

    def examples(self, test: Dataset) -> Dataset:
        """The held-out examples scored: the first max_examples of the test split."""
        n = len(test) if self.max_examples is None else min(self.max_examples, len(test))
        return test.subset(list(range(n)))


class OptimizeConfig(_Strict):
    """Everything one optimisation run needs; the defaults run the demo task on the bundled model."""

    task: str | None = Field(None, description="name of the task (MLflow experiment, prompt name); default: the dataset's")
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: str | None = Field(None, description="the prompt to start from; default: the dataset's default prompt")
    model: ModelConfig = Field(default_factory=ModelConfig)
    # The paper runs 20 iterations. 2 show the method at work (masking, rewrites, selection, twice) and keep
    # the demo under three minutes on an idle 2-core CPU (2 min 45 s, `pmpo optimize` from an empty store).
    iterations: int = Field(2, ge=0)
    train_fraction: float = Field(0.2, gt=0, le=1, description="the paper trains on 20% of the data...")
    train_cap: int | None = Field(50, ge=1, description="...capped at 50 examples")
    seed: int = 0
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    # auto: the rewriter marks units (the paper's way) when it has >= 1B parameters, else the splitter.
    units: Literal["auto", "splitter", "model"] = Field("auto", description="how the prompt is split for masking")
    # False is the paper's ablation without masking (no dL table, no mask forward passes, no removals).
    masking: bool = Field(True, description="measure each unit's dL and show it to the rewriter")
    segment_removal: bool = Field(True, description="also try the prompt without each unit that hurts")
    racing: RacingConfig = Field(default_factory=RacingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    experiment: str | None = Field(None, description="MLflow experiment; default: the task name")
    register_prompt: bool = Field(True, description="register the final prompt in the MLflow Prompt Registry")

    def optimizer(self) -> OptimizerConfig:
        """As pmpo's OptimizerConfig."""
        return OptimizerConfig(
            iterations=self.iterations,
            units=self.units,
            masking=self.masking,
            segment_removal=self.segment_removal,
            rewrite=self.rewrite.settings(),
            racing=self.racing.settings(),
            seed=self.seed,
        )

    def scorer(self) -> ScorerSettings:
        """Scorer settings (pmpo's defaults: they do not change losses beyond float noise)."""
        return ScorerSettings()


class EvaluateConfig(_Strict):
    """A prompt (or a registered one, `prompts:/name@alias`) scored on a dataset's held-out split."""

    prompt: str | None = Field(None, description="prompt text or prompts:/name@alias; default: the dataset's")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train_fraction: float = Field(0.2, gt=0, le=1)
    train_cap: int | None = Field(50, ge=1)
    seed: int = 0  # the split's seed: the same as the optimisation run's, so its training examples stay out
    eval: EvalConfig = Field(default_factory=EvalConfig)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or TOML file (by suffix; YAML otherwise)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: {_first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level, got {type(data).__name__}")
    return data


def build(model: type[BaseModel], values: dict[str, Any], origin: str = "config"):
    """Validate `values` as `model`, turning pydantic's report into one line naming the field."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{origin}: {where}: {message}{more}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: `override` wins, sub-mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_hash(config: BaseModel) -> str:
    """A stable digest of a config's content (part of the MLflow run key)."""
    import hashlib

    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
