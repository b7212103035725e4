"""The MLflow adapter: the only module that imports mlflow. Everything a run leaves behind goes through here.

One experiment per task, one parent run per optimisation (resumed, not duplicated, after a crash: found by
its run key), per-iteration metrics with step, the candidates table rewritten whole after every iteration,
and at the end held-out metrics, a plot and the final prompt in the Prompt Registry. The MLflow client API
is used throughout (no fluent "active run"), so nothing here depends on global run state.

Concurrency (tasks.locks): a fresh SQLite store is created and migrated by one process at a time, under a file
lock, so runs started together on a new PMPO_HOME all find a whole schema. A run has one live writer: the
process holding its run key's lock, recorded on the run as `pmpo.owner` (host:pid). An identical command
started while that process lives exits at once with `RunBusy` naming it; after it ends or is killed, the next
identical command resumes the run. A prompt text registered again under the same name reuses its version.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from pmpo.errors import PmpoError
from pmpo.loop.result import Candidate, Iteration, SegmentEffect
from pmpo.text.template import from_registry, to_registry
from pmpo.models.usage import STEPS, Cost
from tasks import locks
from tasks.environment import artifacts_dir, home, shown_tracking_uri, tracking_uri

RUN_KEY_TAG = "pmpo.run_key"
OWNER_TAG = "pmpo.owner"  # host:pid of the process that last wrote the run
RUN_IDS_TAG = "pmpo.run_ids"  # on a prompt version: every run that produced its text, comma-separated
CANDIDATES_FILE = "candidates.json"
STEP_METRIC = "incumbent_loss"  # logged last in an iteration: its history says which iterations are recorded
_PROMPT_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_METRIC_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]+")


class TrackingError(PmpoError):
    """A run, prompt or store named by the user does not exist or cannot be read."""


@dataclass(frozen=True)
class TrackedRun:
    """Where one optimisation is recorded."""

    run_id: str
    experiment_id: str
    experiment: str
    resumed: bool  # an unfinished run with the same key was found and continues
    logged_through: int  # the last iteration already recorded (-1: none)
    run_key: str = ""  # whose lock this process holds while it writes the run ("" for record runs: no lock)

    @property
    def url_path(self) -> str:
        """The run's page, relative to the MLflow UI's address."""
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"


def client() -> MlflowClient:
    """A client on the configured store (MLFLOW_TRACKING_URI, else SQLite in the data directory)."""
    uri = tracking_uri()  # read every time: PMPO_HOME may change between runs in one process (tests)
    mlflow.set_tracking_uri(uri)  # the Prompt Registry API reads the global URI
    return _client(uri)


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    home().mkdir(parents=True, exist_ok=True)
    for name in ("alembic", "mlflow.store.db.utils"):  # schema set-up chatter on a fresh database
        logging.getLogger(name).setLevel(logging.WARNING)
    # Each store object creates and migrates missing tables when built; two processes doing it at once on a
    # fresh file leave a half-migrated schema. Build both (tracking, registry) here, one process at a time.
    with locks.store_setup("mlflow"):
        c = MlflowClient(uri)
        _ = c._tracking_client.store, c._get_registry_client().store
    return c


def ui_command() -> str:
    """The shell command that opens the MLflow UI on this store."""
    uri = shown_tracking_uri()
    return f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"


def experiment_id(c: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts under the data directory on the default store)."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if tracking_uri().startswith(f"sqlite:///{home()}"):
        location = (artifacts_dir() / _PROMPT_NAME_BAD.sub("-", name)).as_uri()
    return c.create_experiment(name, artifact_location=location)


def start_run(experiment: str, run_key: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> TrackedRun:
    """Continue the unfinished run with this key, or start one; `locks.RunBusy` when a live process writes it.

    The caller owns the run until `finish` (the lock also goes when the process dies).
    """
    locks.claim_run(run_key)
    try:
        return _open_run(experiment, run_key, run_name, params, {**tags, OWNER_TAG: locks.owner()})
    except BaseException:
        locks.release_run(run_key)
        raise


def _open_run(experiment: str, run_key: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> TrackedRun:
    c = client()
    exp_id = experiment_id(c, experiment)
    previous = c.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", order_by=["attributes.start_time DESC"])
    unfinished = [r for r in previous if r.info.status != "FINISHED"]
    if unfinished:  # we hold the key's lock, so its last writer is gone: take the run over
        run_id = unfinished[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return TrackedRun(run_id, exp_id, experiment, resumed=True, logged_through=_last_step(c, run_id), run_key=run_key)
    run = c.create_run(exp_id, run_name=run_name, tags={**tags, RUN_KEY_TAG: run_key})
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for at in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run.info.run_id, params=items[at : at + 100])
    return TrackedRun(run.info.run_id, exp_id, experiment, resumed=False, logged_through=-1, run_key=run_key)


def log_metrics(run: TrackedRun, metrics: dict[str, float], step: int) -> None:
    """Log metrics at `step` (finite values only: MLflow stores inf badly and a chart cannot show it)."""
    now = int(time.time() * 1000)
    items = [Metric(_METRIC_NAME_BAD.sub("_", k), float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
    client().log_batch(run.run_id, metrics=items)


def log_iteration(run: TrackedRun, it: Iteration, n_total: int) -> None:
    """An iteration's metrics and masking table; the incumbent loss goes last as the 'recorded' marker."""
    c = client()
    if it.segments:
        write_table(c, run, f"masking/iter_{it.iteration:03d}.json", masking_columns(it.segments))
    metrics = {
        "best_candidate_loss": it.best_candidate_loss,
        "n_candidates": it.n_candidates,
        "n_candidates_total": n_total,
        "n_dropped": it.n_dropped,
        "improved": float(it.improved),
        **{f"rejected/{reason}": count for reason, count in it.rejected.items()},
        **cost_metrics(it.cost),
    }
    log_metrics(run, metrics, it.iteration)
    log_metrics(run, {STEP_METRIC: it.incumbent_loss}, it.iteration)


def cost_metrics(cost: Cost, scope: str = "") -> dict[str, float]:
    """`cost/tokens_scored`, `time/loss_s`, ... of a span; a `scope` ("total") keeps run totals apart."""
    suffix = f"_{scope}" if scope else ""
    u = cost.usage
    metrics = {
        f"cost{suffix}/forward_passes": u.forward_passes,
        f"cost{suffix}/tokens_scored": u.tokens_scored,
        f"cost{suffix}/tokens_generated": u.tokens_generated,
        f"cost{suffix}/tokens_prefilled": u.tokens_prefilled,
        f"time{suffix}/wall_s": cost.seconds,
    }
    return metrics | {f"time{suffix}/{s}_s": cost.step(s).seconds for s in STEPS}


def masking_columns(effects: Sequence[SegmentEffect]) -> dict[str, list]:
    """The masking table: dL of removing each unit (negative: the unit hurts)."""
    return {
        "index": [e.index for e in effects],
        "unit": [e.text for e in effects],
        "delta_loss": [e.delta_loss for e in effects],
    }


def candidate_columns(candidates: Sequence[Candidate], selected: set[str]) -> dict[str, list]:
    """The candidates table, one row per candidate; `selected`: it was the incumbent after its iteration."""
    return {
        "id": [c.id for c in candidates],
        "parent": [c.parent_id for c in candidates],
        "iteration": [c.iteration for c in candidates],
        "origin": [c.origin for c in candidates],
        "prompt": [c.prompt for c in candidates],
        "loss_sum": [c.loss * c.n_examples for c in candidates],  # summed over the training examples
        "loss_mean": [c.loss for c in candidates],  # the objective: mean over examples of summed target CE
        "loss_per_token": [c.loss_per_token for c in candidates],
        "n_examples": [c.n_examples for c in candidates],
        "dropped": [c.dropped for c in candidates],  # racing stopped it after n_examples: loss is over those only
        "selected": [c.id in selected for c in candidates],
    }


def log_candidates(run: TrackedRun, candidates: Sequence[Candidate], selected: set[str]) -> None:
    """Rewrite the whole candidates table (never appended to: a resumed run must not duplicate rows)."""
    write_table(client(), run, CANDIDATES_FILE, candidate_columns(candidates, selected))


def write_table(c: MlflowClient, run: TrackedRun, artifact_file: str, columns: dict[str, list]) -> None:
    """Write a table artifact, replacing any earlier version.

    `MlflowClient.log_table` appends to an existing file; we write the same JSON ('split' orient) with
    log_text, which replaces it, and register the file as a table the way log_table does, for the UI.
    """
    names = list(columns)
    rows = [list(row) for row in zip(*(columns[n] for n in names))]
    c.log_text(run.run_id, json.dumps({"columns": names, "data": rows}), artifact_file)
    tags = c.get_run(run.run_id).data.tags
    logged = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        c.set_tag(run.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def log_figure(run: TrackedRun, figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as a PNG artifact."""
    client().log_figure(run.run_id, figure, artifact_file)


def log_text(run: TrackedRun, text: str, artifact_file: str) -> None:
    """Save a text artifact (replaces an earlier one)."""
    client().log_text(run.run_id, text, artifact_file)


def set_tags(run: TrackedRun, tags: dict[str, str]) -> None:
    """Set run tags."""
    client().log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def run_tags(run_id: str) -> dict[str, str]:
    """A run's tags."""
    return dict(_get_run(client(), run_id).data.tags)


def finish(run: TrackedRun, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED: a later identical command resumes a failed run) and give up its lock."""
    try:
        client().set_terminated(run.run_id, status=status)
    finally:
        if run.run_key:
            locks.release_run(run.run_key)


def prompt_name(task: str) -> str:
    """A Prompt Registry name for a task (letters, digits, _ . - only)."""
    return _PROMPT_NAME_BAD.sub("-", task).strip("-") or "prompt"


def register_prompt(task: str, prompt: str, loss: float, run: TrackedRun) -> tuple[str, int]:
    """Register `prompt` under the task's name with its loss and run id; the same text reuses its version.

    A reused version keeps its `run_id` tag (the run that first produced it) and gains this run in
    `pmpo.run_ids`. `prompts:/<name>@latest` loads the newest version: MLflow reserves the alias `latest`
    and resolves it itself (setting it explicitly is refused).
    """
    c = client()
    name = prompt_name(task)
    existing = _same_text_version(c, name, prompt)
    if existing is not None:
        runs = [r for r in existing.tags.get(RUN_IDS_TAG, existing.tags.get("run_id", "")).split(",") if r]
        if run.run_id not in runs:
            c.set_prompt_version_tag(name, existing.version, RUN_IDS_TAG, ",".join([*runs, run.run_id]))
        return name, int(existing.version)
    version = mlflow.genai.register_prompt(
        name=name,
        template=to_registry(prompt),  # a chat prompt stays a list of messages, as the application loads it
        commit_message=f"pmpo run {run.run_id}: training loss {loss:.4f}",
        tags={"loss": f"{loss:.6f}", "run_id": run.run_id, RUN_IDS_TAG: run.run_id},
    )
    return name, int(version.version)


def _same_text_version(c: MlflowClient, name: str, text: str):
    """The newest version of prompt `name` whose text is `text` (None: none, or no such prompt)."""
    try:
        versions = c.search_prompt_versions(name)
    except MlflowException:
        return None
    same = [v for v in versions if from_registry(v.template) == text]
    return max(same, key=lambda v: int(v.version), default=None)


def load_registered_prompt(uri: str) -> str:
    """The text of a registered prompt, e.g. `prompts:/sentiment@latest` or `prompts:/sentiment/2` (a chat
    prompt as pmpo's one string form of its messages, pmpo.text.template)."""
    client()
    try:
        return from_registry(mlflow.genai.load_prompt(uri).template)
    except MlflowException as exc:
        raise TrackingError(f"prompt {uri!r} not found in {shown_tracking_uri()}: {exc.message.splitlines()[0]}") from None


def list_runs(experiment: str | None = None, max_results: int = 50) -> list[dict[str, Any]]:
    """Recent pmpo runs (newest first), in one experiment or all."""
    c = client()
    if experiment is not None:
        found = c.get_experiment_by_name(experiment)
        if found is None:
            raise TrackingError(f"no experiment {experiment!r} in {shown_tracking_uri()}")
        experiments = [found]
    else:
        experiments = c.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return []
    runs = c.search_runs(list(names), order_by=["attributes.start_time DESC"], max_results=max_results)
    return [
        {
            "run_id": r.info.run_id,
            "experiment": names[r.info.experiment_id],
            "name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "initial_loss": r.data.metrics.get("initial_loss"),
            "best_loss": r.data.metrics.get("best_loss"),
            "n_candidates": r.data.metrics.get("n_candidates_total"),
            "heldout_accuracy": r.data.metrics.get("heldout/accuracy_final"),
        }
        for r in runs
        if RUN_KEY_TAG in r.data.tags
    ]


def run_candidates(run_id: str) -> list[dict[str, Any]]:
    """The candidates table of a run, as rows."""
    c = client()
    _get_run(c, run_id)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{CANDIDATES_FILE}")
    except (MlflowException, OSError):
        return []
    table = json.loads(text)
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in logging order."""
    return [(m.step, m.value) for m in client().get_metric_history(run_id, key)]


def _get_run(c: MlflowClient, run_id: str):
    try:
        return c.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no run {run_id!r} in {shown_tracking_uri()} (see `pmpo runs`)") from None


def _last_step(c: MlflowClient, run_id: str) -> int:
    return max((m.step for m in c.get_metric_history(run_id, STEP_METRIC)), default=-1)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 500 else text[:497] + "..."  # the full config is also logged as config.json



@dataclass(frozen=True)
class FlowRunRecord:
    """What an optimisation run launched as a Prefect flow run left in MLflow (found by its flow run id)."""

    run_id: str
    status: str
    initial_prompt: str
    best_prompt: str
    initial_loss: float | None
    best_loss: float | None


def record_of_flow_run(experiment: str, flow_run_id: str) -> FlowRunRecord | None:
    """The optimisation run a flow run wrote (its `prefect.flow_run_id` tag); None when it wrote none."""
    c = client()
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = c.search_runs([found.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
                         order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if not runs:
        return None
    r = runs[0]
    texts = {}
    for which in ("initial", "best"):
        try:
            texts[which] = mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/prompts/{which}.txt")
        except (MlflowException, OSError):
            return None  # the run ended before it saved its prompts: no candidate to judge
    m = r.data.metrics
    return FlowRunRecord(r.info.run_id, r.info.status, texts["initial"], texts["best"], m.get("initial_loss"), m.get("best_loss"))
