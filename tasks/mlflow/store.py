"""The MLflow store: a client on the configured tracking URI, the store's one-time set-up, experiments.

Concurrency: a fresh SQLite store is created and migrated by one process at a time, under a file lock
(tasks.mlflow.locks), so runs started together on a new PMPO_HOME all find a whole schema.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from typing import cast

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from pmpo.errors import PmpoError
from tasks.environment import artifacts_dir, home, shown_tracking_uri, tracking_uri
from tasks.mlflow import locks
from tasks.mlflow.shield import Shielded, is_database, stops_held

__all__ = ["MlflowException", "TrackingError", "client", "experiment_id", "get_run", "held", "safe_name", "ui_command"]

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


class TrackingError(PmpoError):
    """A run, prompt or store named by the user does not exist or cannot be read."""


def client() -> MlflowClient:
    """A client on the configured store (MLFLOW_TRACKING_URI, else SQLite in the data directory); on a database
    store each call is shielded from stop signals (tasks.mlflow.shield)."""
    uri = tracking_uri()  # read every time: PMPO_HOME may change between runs in one process (tests)
    mlflow.set_tracking_uri(uri)  # the Prompt Registry API reads the global URI
    return cast(MlflowClient, Shielded(_client(uri))) if is_database(uri) else _client(uri)


def held() -> contextlib.AbstractContextManager[None]:
    """Stop signals held back for a call of MLflow's module-level API on the configured store, as `client()` does."""
    return stops_held() if is_database(tracking_uri()) else contextlib.nullcontext()


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


def safe_name(name: str) -> str:
    """`name` with every run of characters MLflow refuses in a prompt name (or a folder) as one `-`."""
    return _NAME_BAD.sub("-", name)


def experiment_id(c: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts under the data directory on the default store)."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if tracking_uri().startswith(f"sqlite:///{home()}"):
        location = (artifacts_dir() / safe_name(name)).as_uri()
    return c.create_experiment(name, artifact_location=location)


def get_run(c: MlflowClient, run_id: str) -> Run:
    """The run with this id; a TrackingError naming the store when there is none."""
    try:
        return c.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no run {run_id!r} in {shown_tracking_uri()} (see `pmpo runs`)") from None
