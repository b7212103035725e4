"""Runs: an optimisation run found by its run key and continued after a crash, its one live writer, its tags,
its end; and record runs (a nightly refresh, a comparison), which are always new.

A run has one live writer: the process holding its run key's lock (tasks.mlflow.locks), recorded on the run as
`pmpo.owner` (host:pid). An identical command started while that process lives exits at once with `RunBusy`
naming it; after it ends or is killed, the next identical command resumes the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, RunTag

from tasks.mlflow import locks
from tasks.mlflow.store import client, experiment_id, get_run

RUN_KEY_TAG = "pmpo.run_key"
OWNER_TAG = "pmpo.owner"  # host:pid of the process that last wrote the run
STEP_METRIC = "incumbent_loss"  # logged last in an iteration: its history says which iterations are recorded


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


# Runs this process owns (started or taken over, not yet finished), by id: what `fail_open_runs` marks at exit.
_OPEN: dict[str, TrackedRun] = {}


def start_run(experiment: str, run_key: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> TrackedRun:
    """Continue the unfinished run with this key, or start one; `locks.RunBusy` when a live process writes it.

    The caller owns the run until `finish` (the lock also goes when the process dies).
    """
    locks.claim_run(run_key)
    try:
        run = _open_run(experiment, run_key, run_name, params, {**tags, OWNER_TAG: locks.owner()})
    except BaseException:
        locks.release_run(run_key)
        raise
    _OPEN[run.run_id] = run
    return run


def _open_run(experiment: str, run_key: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> TrackedRun:
    c = client()
    exp_id = experiment_id(c, experiment)
    previous = c.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", order_by=["attributes.start_time DESC"]
    )
    unfinished = [r for r in previous if r.info.status != "FINISHED"]
    if unfinished:  # we hold the key's lock, so its last writer is gone: take the run over
        run_id = unfinished[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return TrackedRun(
            run_id, exp_id, experiment, resumed=True, logged_through=_last_step(c, run_id), run_key=run_key
        )
    run = c.create_run(exp_id, run_name=run_name, tags={**tags, RUN_KEY_TAG: run_key})
    items = [Param(k, param_value(v)) for k, v in params.items()]
    for at in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run.info.run_id, params=items[at : at + 100])
    return TrackedRun(run.info.run_id, exp_id, experiment, resumed=False, logged_through=-1, run_key=run_key)


def start_record_run(experiment: str, run_name: str, tags: dict[str, str]) -> TrackedRun:
    """A fresh run for a record that is not an optimisation (never resumed: each refresh or comparison is new)."""
    c = client()
    exp_id = experiment_id(c, experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return TrackedRun(run.info.run_id, exp_id, experiment, resumed=False, logged_through=-1)


def finish(run: TrackedRun, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED: a later identical command resumes a failed run) and give up its lock."""
    try:
        client().set_terminated(run.run_id, status=status)
    finally:
        _OPEN.pop(run.run_id, None)
        if run.run_key:
            locks.release_run(run.run_key)


def fail_open_runs() -> None:
    """Mark FAILED every run this process started and has not finished: the last resort of a command that must
    exit now (its flow could not unwind in time), so the record says what the next identical command will do."""
    for run in list(_OPEN.values()):
        try:
            finish(run, "FAILED")
        except Exception:  # noqa: BLE001 (best effort at exit: a RUNNING run whose owner died is resumed too)
            pass


def set_tags(run: TrackedRun, tags: dict[str, str]) -> None:
    """Set run tags."""
    client().log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Set tags on a run known by id (e.g. an optimisation run's nightly decision)."""
    c = client()
    for key, value in tags.items():
        c.set_tag(run_id, key, str(value))


def run_tags(run_id: str) -> dict[str, str]:
    """A run's tags."""
    return dict(get_run(client(), run_id).data.tags)


def _last_step(c: MlflowClient, run_id: str) -> int:
    return max((m.step for m in c.get_metric_history(run_id, STEP_METRIC)), default=-1)


def param_value(value: Any) -> str:
    """A param's text: strings as they are, anything else as JSON; cut to MLflow's 500 characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 500 else text[:497] + "..."  # the full config is also logged as config.json
