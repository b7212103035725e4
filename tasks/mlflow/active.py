"""A run someone else opened (`mlflow.genai.optimize_prompts` opens one and hands the optimizer the work):
found, written through the same helpers as pmpo's own runs, on the store the caller chose.

pmpo's helpers build their client from the configured tracking URI (tasks.environment); a caller of MLflow's
API may have set the URI in code (`mlflow.set_tracking_uri`) instead. `on_callers_store` points pmpo's helpers
at that store while the adapter writes, so the record lands in the run the caller is looking at.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import mlflow
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tasks.mlflow.runs import TrackedRun, param_value
from tasks.mlflow.store import client

_URI = "MLFLOW_TRACKING_URI"


@contextmanager
def on_callers_store() -> Iterator[None]:
    """While inside, pmpo's MLflow helpers use the store MLflow's fluent API uses now."""
    before = os.environ.get(_URI)
    os.environ[_URI] = mlflow.get_tracking_uri()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_URI, None)
        else:
            os.environ[_URI] = before


def active_run() -> TrackedRun | None:
    """The run MLflow's fluent API has open in this thread, as pmpo's writers take it (None: no run open)."""
    run = mlflow.active_run()
    if run is None:
        return None
    exp_id = run.info.experiment_id
    return TrackedRun(run.info.run_id, exp_id, client().get_experiment(exp_id).name, resumed=False, logged_through=-1)


def child_run(parent: TrackedRun, run_name: str, tags: dict[str, str]) -> TrackedRun:
    """A run nested under `parent` (MLflow's UI shows it under the parent), never resumed."""
    run = client().create_run(
        parent.experiment_id, run_name=run_name, tags={**tags, MLFLOW_PARENT_RUN_ID: parent.run_id}
    )
    return TrackedRun(run.info.run_id, parent.experiment_id, parent.experiment, resumed=False, logged_through=-1)


def log_params(run: TrackedRun, params: dict[str, Any]) -> None:
    """Log params (long values cut to MLflow's limit; the full settings go in an artifact)."""
    items = [Param(k, param_value(v)) for k, v in params.items()]
    for at in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client().log_batch(run.run_id, params=items[at : at + 100])
