"""Kill a real `pmpo optimize` process after its first recorded iteration, as a terminal's or a scheduler's kill
would: shared by the CLI's resume test and the Dask path's (tests/system/cli/test_resume.py, tests/system/flows/
test_dask.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

KILL_AFTER_ITERATION = 1  # recorded in MLflow: its candidates and its loss evaluations are done


def command(config, output) -> list[str]:
    """`pmpo optimize` on a config file, writing its summary to `output`."""
    return [sys.executable, "-m", "pmpo_cli.main", "optimize", "--config", str(config), "--output", str(output)]


def cli_env(tmp_path) -> dict[str, str]:
    """The child's environment: its own pmpo and Prefect homes under `tmp_path`, no servers, no hub."""
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    return env


def recorded_iterations(queries) -> list[int]:
    """Iterations whose record is complete in MLflow (incumbent_loss is logged last in an iteration)."""
    try:
        runs = queries.list_runs()
    except Exception:  # the store is still being created by the child process
        return []
    return [step for r in runs for step, _ in queries.metric_history(r["run_id"], "incumbent_loss")]


def kill_after_first_iteration(config, output, env: dict[str, str], queries, *, timeout_s: float) -> None:
    """Start `pmpo optimize` and SIGKILL it, with every process it started, once iteration 1 is in MLflow.

    Its own process group, so the kill takes Prefect's local API server (a child process) and any Dask workers
    down with it, as a terminal's or a scheduler's kill would; a lone SIGKILL to the parent would orphan them.
    """
    child = subprocess.Popen(
        command(config, output), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while KILL_AFTER_ITERATION not in recorded_iterations(queries):
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "iteration 1 was never recorded"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stderr.close()
