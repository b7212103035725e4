"""The flows' parameters: one validated pydantic model per flow (Prefect renders it as the run form).

A config file (YAML or TOML) holds the same fields: `pmpo optimize --config run.yaml`. The method's blocks
(`model`, `rewriter`, `rewrite`, `racing`, `scoring` and the loop's own fields) are pmpo's settings models, nested
as they are; this module adds only what a flow needs around them: the data, the held-out check, the task runner.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pmpo.data import Dataset
from pmpo.data.loaders import BUILTIN_PREFIX, FORMATS, infer_format
from pmpo.data.rows import ColumnMap, unknown_mapping
from pmpo.data.split import TRAIN_CAP, TRAIN_FRACTION, TrainCap, TrainFraction
from pmpo.errors import PmpoError
from pmpo.evaluation.draw import heldout_draw
from pmpo.loop.settings import OptimizerConfig
from pmpo.models.settings import ModelSettings
from pmpo.rewriting.settings import RewriterSettings
from pmpo.scoring.settings import ScorerSettings
from pmpo.settings import Strict
from pmpo.text.template import prompt_variables

DEMO_TASK = "builtin:sentiment"
_FILE_FORMATS = {"jsonl", "json", "bigbench", "csv", "tsv", "parquet"}


class ConfigError(PmpoError):
    """A config file or value is not valid; the message names the file and field."""


class DataConfig(Strict):
    """Where the examples come from and how their columns map to ours."""

    source: str = Field(DEMO_TASK, description="a file (.jsonl .json .csv .tsv .parquet), builtin:<task> or a hub name")
    format: str | None = Field(None, description=f"override the format the suffix implies: {', '.join(FORMATS)}")
    columns: dict[str, str] = Field(default_factory=dict, description="our field -> your column, e.g. target: answer")
    # auto: from the columns the rows have (a target, chosen/rejected, or options).
    kind: Literal["auto", "supervised", "preference", "multiple_choice"] = Field(
        "auto", description="what the examples are"
    )
    limit: int | None = Field(
        None, ge=1, description="read at most this many examples (builtin tasks: generate this many)"
    )
    hub_config: str | None = Field(None, description="hub datasets: the configuration (subset) to load")
    hub_split: str | None = Field(None, description="hub datasets: the split to read (default: the only one)")
    # The paper's rewrite request opens with the task's description; a file's <stem>.meta.json may give one.
    description: str | None = Field(
        None, description="the task in your words, shown to the rewriter (default: <data>.meta.json's description)"
    )

    @model_validator(mode="after")
    def _file_exists(self) -> "DataConfig":
        # Checked here, before any flow starts, so a typo costs a one-line error and not a server start.
        source = self.source
        if source.startswith(BUILTIN_PREFIX):
            return self
        try:
            fmt = self.format or infer_format(source)
        except PmpoError as exc:  # an existing file whose name says no format
            raise ValueError(str(exc)) from None
        looks_like_file = fmt in _FILE_FORMATS or source.startswith((".", "/", "~"))
        if looks_like_file and not Path(source).expanduser().exists():
            raise ValueError(f"data file {source!r} does not exist")
        return self

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        # A name that is not one of our fields is a template variable (`review: text` fills {{review}}).
        try:
            ColumnMap.from_mapping(columns)
        except PmpoError as exc:
            raise ValueError(str(exc)) from None
        return columns


class EvalConfig(Strict):
    """The held-out check of the initial and final prompt at the end of a run."""

    # Greedy answers on CPU are the slow part of evaluation; 50 examples keep it well under a minute with
    # SmolLM2. They resolve accuracy only coarsely: near 50% its standard error is sqrt(.25/50) = 7 points, so
    # the change from initial to final prompt is shown with a paired bootstrap 95% interval; raise this to
    # narrow it (the error shrinks as 1/sqrt(n)).
    max_examples: int | None = Field(
        50, ge=1, description="score at most this many held-out examples (a seeded draw, stratified by label)"
    )
    generate: bool = Field(True, description="also generate answers and report accuracy (slower than loss)")
    # None: the longest reference in tokens plus a margin for a chat model's lead-in ("The answer is"), so
    # long answers are not cut short and one-word labels do not pay for tokens they never use.
    max_new_tokens: int | None = Field(
        None, ge=1, description="tokens a held-out answer may run to (default: longest reference + 12)"
    )
    # contains: chat models answer in sentences ("The review is positive."), which exact match calls wrong.
    match: Literal["exact", "contains"] = Field(
        "contains",
        description="exact: the reply's first line is the answer; contains: the reply names it and no other label",
    )

    def examples(self, test: Dataset, seed: int) -> Dataset:
        """The held-out examples scored: max_examples of the test split, a draw with the run's seed, by label."""
        return heldout_draw(test, self.max_examples, seed=seed)


class TaskRunnerConfig(Strict):
    """Where the loss evaluations run: in this process, or sharded over a Dask cluster (prefect-dask)."""

    # local: the embedded path, unchanged (one loss task per step, in this process).
    kind: Literal["local", "dask"] = Field("local", description="local: this process; dask: a Dask cluster")
    # None or "local": a LocalCluster the flow starts and stops; tcp://host:port: a running scheduler (its
    # workers must import pmpo and reach the result store; see the README).
    address: str | None = Field(
        None, description="Dask scheduler: tcp://host:port, or local (a cluster of this machine)"
    )
    # 2: the smallest cluster that shards at all. Processes, not threads: torch releases the GIL too seldom
    # for threads to run two forward passes at once.
    n_workers: int = Field(2, ge=1, description="worker processes of a local cluster (one model copy each)")
    # 1: on a machine of few cores, one torch thread per worker keeps workers from fighting over cores.
    threads_per_worker: int = Field(1, ge=1, description="threads (and torch threads) per local worker")

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, address: str | None) -> str | None:
        if address is None or address == "local":
            return None
        if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$", address):
            raise ValueError(f"{address!r} is not a Dask scheduler address: use tcp://host:port or local")
        return address

    @model_validator(mode="after")
    def _dask_for_address(self) -> "TaskRunnerConfig":
        if self.address is not None and self.kind != "dask":
            raise ValueError("an address needs kind: dask")
        return self


def check_column_names(data: DataConfig, prompt: str | None) -> None:
    """A column mapping must name one of our fields or a variable of the prompt, when the prompt is known (given,
    not the dataset's default nor a registered one): `targte: label` is a typo, not a new variable."""
    if prompt is None or prompt.startswith("prompts:/"):
        return
    names = prompt_variables(prompt)
    for name, column in ColumnMap.from_mapping(data.columns).variables:
        if name not in names:
            raise ValueError(str(unknown_mapping("data.columns", name, column, names)))


class OptimizeConfig(OptimizerConfig):
    """Everything one optimisation run needs: the loop's settings (pmpo's OptimizerConfig, whose fields it has
    as they are) and the data, models, evaluation and record around them; the defaults run the demo task on the
    bundled model."""

    task: str | None = Field(
        None, description="name of the task (MLflow experiment, prompt name); default: the dataset's"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: str | None = Field(None, description="the prompt to start from; default: the dataset's default prompt")
    model: ModelSettings = Field(default_factory=ModelSettings)
    rewriter: RewriterSettings = Field(default_factory=RewriterSettings)
    train_fraction: TrainFraction = TRAIN_FRACTION
    train_cap: TrainCap = TRAIN_CAP
    scoring: ScorerSettings = Field(default_factory=ScorerSettings)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    experiment: str | None = Field(None, description="MLflow experiment; default: the task name")
    register_prompt: bool = Field(True, description="register the final prompt in the MLflow Prompt Registry")
    # Not part of the run's identity (run_key leaves it out): where losses are computed changes no number, so
    # a run started on a cluster may resume in one process and the other way round.
    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig)

    @model_validator(mode="after")
    def _columns_name_fields_or_variables(self) -> "OptimizeConfig":
        check_column_names(self.data, self.prompt)
        return self


class EvaluateConfig(Strict):
    """A prompt (or a registered one, `prompts:/name@alias`) scored on a dataset's held-out split."""

    prompt: str | None = Field(None, description="prompt text or prompts:/name@alias; default: the dataset's")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train_fraction: TrainFraction = TRAIN_FRACTION
    train_cap: TrainCap = TRAIN_CAP
    # The same as the optimisation run's, so its training examples stay out of the held-out split.
    seed: int = Field(0, description="the split's seed")
    scoring: ScorerSettings = Field(default_factory=ScorerSettings)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _columns_name_fields_or_variables(self) -> "EvaluateConfig":
        check_column_names(self.data, self.prompt)
        return self


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or TOML file (by suffix; YAML otherwise)."""
    path = Path(path)
    text = read_text(path, "config file")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: {_first_line(exc)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level, got {type(data).__name__}")
    return data


def read_text(path: Path, what: str, where: str | None = None) -> str:
    """A UTF-8 text file's content; a ConfigError naming the file (`where`) and line when it cannot be read."""
    where = where or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {what} ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}, line {line}: {what} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def build(model: type[BaseModel], values: dict[str, Any], origin: str = "config", names: dict[str, str] | None = None):
    """Validate `values` as `model`, turning pydantic's report into one line naming the field (as `names` calls
    it, when given: the command line names a field by its flag); an unknown key names its close match."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message += _did_you_mean(str(err["loc"][-1]), _known_keys(model, err["loc"][:-1]))
        flag = _flag_for(err["loc"], names or {})
        if flag:
            raise ConfigError(f"{flag}: {message}{more}") from None
        raise ConfigError(
            f"{origin}: {message}{more}" if not err["loc"] else f"{origin}: {where}: {message}{more}"
        ) from None


def _flag_for(loc: tuple, names: dict[str, str]) -> str | None:
    """The flag that sets the field at `loc` (`data.limit` -> --limit), if one does."""
    return names.get(".".join(str(p) for p in loc)) if loc else None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model found at `loc` in `model` (list items and optionals looked through)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        nested = (
            [t for t in _flattened(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
            if field
            else []
        )
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _flattened(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [t for a in args for t in _flattened(a)] if args else [annotation]


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: `override` wins, sub-mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
