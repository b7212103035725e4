"""The flows' parameters: one validated pydantic model per flow (Prefect renders it as the run form).

A config file (YAML or TOML) holds the same fields: `pmpo optimize --config run.yaml`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pmpo.data import Dataset
from pmpo.data.loaders import BUILTIN_PREFIX, FORMATS, infer_format
from pmpo.data.rows import ColumnMap
from pmpo.errors import PmpoError
from pmpo.scoring.loss import ScorerSettings
from pmpo.models.loading import DEFAULT_MODEL, ModelSettings
from pmpo.loop.optimizer import OptimizerConfig
from pmpo.scoring.racing import RacingSettings
from pmpo.rewriting.proposal import RewriteSettings
from pmpo.rewriting.backends import ChatSettings

DEMO_TASK = "builtin:sentiment"
_FILE_FORMATS = {"jsonl", "json", "bigbench", "csv", "tsv", "parquet"}


class ConfigError(PmpoError):
    """A config file or value is not valid; the message names the file and field."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a config file must not silently run the defaults.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `true` as 1 for a number field: `iterations: true` would run one iteration.
        if isinstance(value, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, not the boolean {str(value).lower()}")
        return value


class DataConfig(_Strict):
    """Where the examples come from and how their columns map to ours."""

    source: str = Field(DEMO_TASK, description="a file (.jsonl .json .csv .tsv .parquet), builtin:<task> or a hub name")
    format: str | None = Field(None, description=f"override the format the suffix implies: {', '.join(FORMATS)}")
    columns: dict[str, str] = Field(default_factory=dict, description="our field -> your column, e.g. target: answer")
    kind: Literal["auto", "supervised", "preference", "multiple_choice"] = "auto"
    limit: int | None = Field(None, ge=1, description="read at most this many examples (builtin tasks: generate this many)")
    hub_config: str | None = None
    hub_split: str | None = None

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


class ModelConfig(_Strict):
    """Which model scores (and, by default, rewrites) prompts."""

    spec: str = Field(DEFAULT_MODEL, description="built-in name, Hugging Face hub id, or local directory")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    placement: Literal["auto", "system", "user", "plain"] = "auto"
    revision: str | None = Field(None, description="hub revision; backend openai: a label pinning the served weights")
    # local keeps the embedded path; openai scores through a server's /v1/completions (echo + logprobs).
    backend: Literal["local", "openai"] = Field("local", description="local: load the weights; openai: score via a server")
    base_url: str | None = Field(None, description="openai: the server's API root, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="openai: the served model's name (default: the one it serves)")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key (never the key)")
    tokenizer: str | None = Field(None, description="openai: HF id or directory of the served model's tokenizer (default: spec)")
    # 4 in flight keeps a batching server (vLLM) busy and a one-request-at-a-time server (llama.cpp) queued briefly.
    max_concurrency: int = Field(4, ge=1, description="openai: requests in flight at once")
    # 60 s: a batch of long prompts on a busy CPU server; timeouts are retried with backoff.
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request")
    max_retries: int = Field(3, ge=0, description="openai: retries of 429, 5xx and timeouts, with backoff")
    check: bool = Field(True, description="openai: refuse a server whose prompt log-probs fail the self-check")
    # Off: it adds a BOS token the model may not see in-process. On for llama.cpp's server, whose echoed
    # log-probs are aligned only after a leading BOS (pmpo.remote.check).
    prepend_bos: bool = Field(False, description="openai: begin every text with BOS (llama.cpp needs it)")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> "ModelConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url (e.g. http://localhost:8000/v1)")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # a key pasted here instead of a variable name would land in every record of the run
            raise ValueError("api_key_env takes the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return self

    def settings(self) -> ModelSettings:
        """As pmpo's ModelSettings."""
        return ModelSettings(**self.model_dump())


class RewriterConfig(_Strict):
    """Which model writes the rewrites and marks prompt units: the scored model (the paper's default), another
    in-process model, or an OpenAI-compatible chat endpoint. Selection is by the scored model's loss either way."""

    backend: Literal["same", "local", "openai"] = Field(
        "same", description="same: the scored model; local: another model in this process; openai: a chat endpoint"
    )
    # local
    spec: str | None = Field(None, description="local: built-in name, hub id or directory of the rewriter model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # openai (and revision for both: it pins weights a name alone does not)
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="openai: the served model's name")
    api_key_env: str | None = Field(None, description="openai: the environment variable holding the API key (never the key)")
    # A rewrite is a few hundred tokens: a minute covers a busy server; retries (with backoff) cover a blip.
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds to wait for one reply")
    max_retries: int = Field(3, ge=0, description="openai: retries on connection errors, 429 and 5xx")
    n_params: int | None = Field(
        None, ge=1, description="openai, or same with a served model: its size, for template/units auto (unknown: large)"
    )
    revision: str | None = Field(None, description="pins the rewriter's weights in the cache key (a server can swap them)")

    @model_validator(mode="after")
    def _backend_fields(self) -> "RewriterConfig":
        if self.backend == "local" and not self.spec:
            raise ValueError("backend local needs spec (the rewriter model)")
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("backend openai needs base_url and model")
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError("api_key_env is the *name* of an environment variable holding the key, e.g. OPENAI_API_KEY")
        return self

    def model_settings(self) -> ModelSettings:
        """backend local: as pmpo's ModelSettings."""
        return ModelSettings(spec=self.spec or DEFAULT_MODEL, dtype=self.dtype, device=self.device, revision=self.revision)

    def chat_settings(self) -> ChatSettings:
        """backend openai: as pmpo's ChatSettings (the key stays in the environment)."""
        return ChatSettings(
            base_url=self.base_url or "", model=self.model or "", api_key_env=self.api_key_env,
            timeout_s=self.timeout_s, max_retries=self.max_retries, n_params=self.n_params, revision=self.revision,
        )  # fmt: skip


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


class ScoringConfig(_Strict):
    """How a prompt's loss is computed; optimisation and evaluation must agree on it."""

    # preference: the paper's recipe for multiple choice, -log sigmoid(beta * (s_correct - s_distractor)),
    # which rewards prompts that separate the answer from the distractors, not ones that merely make it likely.
    mc_objective: Literal["preference", "ce"] = Field(
        "preference", description="multiple-choice loss: preference over distractors, or CE on the answer"
    )
    beta: float = Field(1.0, gt=0, description="the preference loss's beta (the paper: 1)")

    def settings(self) -> ScorerSettings:
        """As pmpo's ScorerSettings (batching left at its defaults: they change no loss beyond float noise)."""
        return ScorerSettings(mc_objective=self.mc_objective, beta=self.beta)


class EvalConfig(_Strict):
    """The held-out check of the initial and final prompt at the end of a run."""

    # Greedy answers on CPU are the slow part of evaluation; 50 examples keep it well under a minute with
    # SmolLM2. They resolve accuracy only coarsely: near 50% its standard error is sqrt(.25/50) = 7 points, so
    # the change from initial to final prompt is shown with a paired bootstrap 95% interval; raise this to
    # narrow it (the error shrinks as 1/sqrt(n)).
    max_examples: int | None = Field(50, ge=1, description="score at most this many held-out examples")
    generate: bool = Field(True, description="also generate answers and report accuracy (slower than loss)")
    # None: the longest reference in tokens plus a margin for a chat model's lead-in ("The answer is"), so
    # long answers are not cut short and one-word labels do not pay for tokens they never use.
    max_new_tokens: int | None = Field(
        None, ge=1, description="tokens a held-out answer may run to (default: longest reference + 12)"
    )
    # contains: chat models answer in sentences ("The review is positive."), which exact match calls wrong.
    match: Literal["exact", "contains"] = Field(
        "contains", description="exact: the reply's first line is the answer; contains: the reply names it and no other label"
    )

    def examples(self, test: Dataset) -> Dataset:
        """The held-out examples scored: the first max_examples of the test split."""
        n = len(test) if self.max_examples is None else min(self.max_examples, len(test))
        return test.subset(list(range(n)))


class TaskRunnerConfig(_Strict):
    """Where the loss evaluations run: in this process, or sharded over a Dask cluster (prefect-dask)."""

    # local: the embedded path, unchanged (one loss task per step, in this process).
    kind: Literal["local", "dask"] = "local"
    # None or "local": a LocalCluster the flow starts and stops; tcp://host:port: a running scheduler (its
    # workers must import pmpo and reach the result store; see the README).
    address: str | None = Field(None, description="Dask scheduler: tcp://host:port, or local (a cluster of this machine)")
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


class OptimizeConfig(_Strict):
    """Everything one optimisation run needs; the defaults run the demo task on the bundled model."""

    task: str | None = Field(None, description="name of the task (MLflow experiment, prompt name); default: the dataset's")
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: str | None = Field(None, description="the prompt to start from; default: the dataset's default prompt")
    model: ModelConfig = Field(default_factory=ModelConfig)
    # same: the scored model rewrites for itself, as in the paper; a stronger rewriter helps a small model most.
    rewriter: RewriterConfig = Field(default_factory=RewriterConfig)
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
    # The system message is where a chat prompt's instruction usually is; name another by its index.
    chat_message: int | None = Field(None, ge=0, description="chat prompts: index of the message to optimise (default: system)")
    racing: RacingConfig = Field(default_factory=RacingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    experiment: str | None = Field(None, description="MLflow experiment; default: the task name")
    register_prompt: bool = Field(True, description="register the final prompt in the MLflow Prompt Registry")
    # Not part of the run's identity (run_key leaves it out): where losses are computed changes no number, so
    # a run started on a cluster may resume in one process and the other way round.
    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig)

    def optimizer(self) -> OptimizerConfig:
        """As pmpo's OptimizerConfig."""
        return OptimizerConfig(
            iterations=self.iterations,
            units=self.units,
            masking=self.masking,
            segment_removal=self.segment_removal,
            chat_message=self.chat_message,
            rewrite=self.rewrite.settings(),
            racing=self.racing.settings(),
            seed=self.seed,
        )

    def scorer(self) -> ScorerSettings:
        """Scorer settings: the loss from `scoring`, batching at pmpo's defaults."""
        return self.scoring.settings()


class EvaluateConfig(_Strict):
    """A prompt (or a registered one, `prompts:/name@alias`) scored on a dataset's held-out split."""

    prompt: str | None = Field(None, description="prompt text or prompts:/name@alias; default: the dataset's")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train_fraction: float = Field(0.2, gt=0, le=1)
    train_cap: int | None = Field(50, ge=1)
    seed: int = 0  # the split's seed: the same as the optimisation run's, so its training examples stay out
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def scorer(self) -> ScorerSettings:
        """Scorer settings: the loss from `scoring`, batching at pmpo's defaults."""
        return self.scoring.settings()


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or bool in get_args(annotation)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or TOML file (by suffix; YAML otherwise)."""
    path = Path(path)
    text = read_text(path, "config file")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: {_first_line(exc)}") from None
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


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
