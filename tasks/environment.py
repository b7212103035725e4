"""Where pmpo keeps its records, and the process settings that must be in place before prefect or mlflow load.

Everything lives under one data directory, `$PMPO_HOME` (default `./.pmpo`):
  mlflow.db     MLflow tracking and Prompt Registry (SQLite), unless MLFLOW_TRACKING_URI says otherwise
  mlartifacts/  MLflow artifacts (tables, plots)
  results/      Prefect task results: the cache that makes a rerun resume instead of recompute
                ($PMPO_RESULTS_DIR puts it elsewhere: a disk shared by several machines, or an fsspec URL)
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import subprocess
from pathlib import Path

from pmpo.errors import PmpoError

# The user-info part of a URI (`scheme://user:password@`): what redact() hides.
_CREDENTIALS = re.compile(r"\b([a-zA-Z][\w+.-]*://)[^/@\s]+@")

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
    # A tracking server that stops answering must fail a run in bounded time. MLflow's own defaults (7 retries,
    # backoff factor 2, 120 s per request) hang a run for many minutes; these bound it to about 2 minutes in the
    # worst case (4 tries x 30 s, plus 1+2+4 s of backoff) and to seconds when the connection is refused.
    # The user sets the same MLflow variables to choose other bounds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Prefect's default heartbeat (every 180 s) is longer than the 90 s of silence after which
    # deployments/crashed-runs.yaml marks a run Crashed: a live refresh started from the CLI would be. 30 s is
    # Prefect's minimum. Runs a worker starts get it from prefect.yaml (their process imports prefect first).
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


def home() -> Path:
    """The data directory: $PMPO_HOME, else .pmpo under the current directory (read at call time)."""
    path = Path(os.environ.get("PMPO_HOME") or ".pmpo").expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise PmpoError(f"PMPO_HOME {str(path)!r} is a file, not a directory: point PMPO_HOME at a directory")
    return path


def results_dir() -> Path:
    """Where Prefect persists task results (the resume cache): $PMPO_RESULTS_DIR, else results/ in the home."""
    location = results_location()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location):
        raise PmpoError(f"PMPO_RESULTS_DIR {redact(location)!r} is a URL, not a directory")
    return Path(location)


def results_location() -> str:
    """$PMPO_RESULTS_DIR as given when it is an fsspec URL (s3://...), else the directory as an absolute path."""
    custom = os.environ.get("PMPO_RESULTS_DIR")
    if custom and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", custom):
        return custom
    return str(Path(custom).expanduser().resolve() if custom else home() / "results")


def artifacts_dir() -> Path:
    """Where MLflow stores artifacts for experiments pmpo creates on its default SQLite store."""
    return home() / "mlartifacts"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else SQLite in the data directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it hidden: `http://user:token@host` -> `http://***@host`."""
    return _CREDENTIALS.sub(r"\1***@", text)


def shown_tracking_uri() -> str:
    """The tracking URI as pmpo prints and records it: credentials redacted."""
    return redact(tracking_uri())


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
