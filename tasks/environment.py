"""Where pmpo keeps its records, and the process settings that must be in place before prefect or mlflow load.

Everything lives under one data directory, `$PMPO_HOME` (default `./.pmpo`):
  mlflow.db     MLflow tracking and Prompt Registry (SQLite), unless MLFLOW_TRACKING_URI says otherwise
  mlartifacts/  MLflow artifacts (tables, plots)
  results/      Prefect task results: the cache that makes a rerun resume instead of recompute
                ($PMPO_RESULTS_DIR puts it elsewhere, e.g. on a disk shared by several machines)
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from pathlib import Path

# Offline by default: no usage reporting from prefect or mlflow. setdefault, so a user's choice stands.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def configure() -> None:
    """Set the environment defaults; must run before prefect or mlflow is imported."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    # Prefect's serverless mode starts a local API; on a busy 2-core machine its first start (database set-up)
    # can take longer than the 20 s Prefect waits by default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading back a table is instant
    # Hub downloads are the user's choice; we only keep datasets' progress bars quiet in our output.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def home() -> Path:
    """The data directory: $PMPO_HOME, else .pmpo under the current directory (read at call time)."""
    return Path(os.environ.get("PMPO_HOME") or ".pmpo").expanduser().resolve()


def results_dir() -> Path:
    """Where Prefect persists task results (the resume cache): $PMPO_RESULTS_DIR, else results/ in the home."""
    custom = os.environ.get("PMPO_RESULTS_DIR")
    return Path(custom).expanduser().resolve() if custom else home() / "results"


def artifacts_dir() -> Path:
    """Where MLflow stores artifacts for experiments pmpo creates on its default SQLite store."""
    return home() / "mlartifacts"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else SQLite in the data directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of this checkout when there is one, else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return f"pmpo=={importlib.metadata.version('pmpo')}"
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
