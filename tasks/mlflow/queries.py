"""The read side of the record: recent runs (`pmpo runs`), a run's candidates (`pmpo show`), a metric's history,
a JSON artifact (a run's config.json), and what an optimisation launched as a Prefect flow run left."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from tasks.environment import shown_tracking_uri
from tasks.mlflow.runs import RUN_KEY_TAG
from tasks.mlflow.store import TrackingError, client, get_run
from tasks.mlflow.writes import CANDIDATES_FILE


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
    get_run(client(), run_id)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{CANDIDATES_FILE}")
    except (MlflowException, OSError):
        return []
    table = json.loads(text)
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in logging order."""
    return [(m.step, m.value) for m in client().get_metric_history(run_id, key)]


def run_json(run_id: str, artifact_file: str) -> dict | None:
    """A JSON artifact of a run (e.g. the config.json every optimisation run keeps); None when absent."""
    c = client()
    try:
        path = c.download_artifacts(run_id, artifact_file)
    except (MlflowException, OSError):
        return None
    with open(path) as f:
        return json.load(f)


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
    runs = c.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
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
    return FlowRunRecord(
        r.info.run_id, r.info.status, texts["initial"], texts["best"], m.get("initial_loss"), m.get("best_loss")
    )
