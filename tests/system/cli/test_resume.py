"""Kill a real `pmpo optimize` process mid-run (SIGKILL: no clean-up runs), run the same command again, and
check that it continued the same MLflow run, stored every candidate once, and recomputed no loss evaluation
it had finished before the kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from support.pipeline import tiny_values

KILL_AFTER_ITERATION = 1  # recorded in MLflow: its candidates and its loss evaluations are done
ITERATIONS = 4  # enough left after the kill point that the kill lands mid-run


def _command(config, output) -> list[str]:
    return [sys.executable, "-m", "pmpo_cli.main", "optimize", "--config", str(config), "--output", str(output)]


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    return env


def _recorded_iterations(queries) -> list[int]:
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
        _command(config, output), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while KILL_AFTER_ITERATION not in _recorded_iterations(queries):
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "iteration 1 was never recorded"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stderr.close()


def test_killed_run_resumes_without_duplicates_or_recomputation(tmp_path, tiny_model_dir, monkeypatch):
    config = tmp_path / "run.yaml"
    # The paper's strict rule and no early stop: on the random tiny model the noise-floor gate keeps the incumbent,
    # and patience would then end the run early; this test needs every iteration to make new candidates after the kill.
    values = tiny_values(
        tiny_model_dir, iterations=ITERATIONS, patience=None, selection={"gate_z": 0, "keep_accuracy": False}
    )
    config.write_text(yaml.safe_dump(values))
    env = _env(tmp_path)
    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    kill_after_first_iteration(config, tmp_path / "first.json", env, queries, timeout_s=420)
    before = queries.list_runs()
    assert len(before) == 1 and before[0]["status"] == "RUNNING"  # killed: nothing marked it finished
    done_before_kill = sorted(set(_recorded_iterations(queries)))
    if done_before_kill[-1] >= ITERATIONS:
        pytest.skip("the machine was too slow to kill the run before it ended")  # pragma: no cover

    rerun = subprocess.run(
        _command(config, tmp_path / "second.json"), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((tmp_path / "second.json").read_text())

    runs = queries.list_runs()
    assert [r["run_id"] for r in runs] == [before[0]["run_id"]] == [summary["run_id"]]  # the same run, no second
    assert summary["resumed"] and runs[0]["status"] == "FINISHED"
    rows = queries.run_candidates(summary["run_id"])
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == summary["n_candidates"]  # each candidate once...
    assert ids == [c["id"] for c in summary["candidates"]]  # ...and none lost
    assert rows[0]["origin"] == "initial" and max(r["iteration"] for r in rows) > KILL_AFTER_ITERATION
    steps = [s for s, _ in queries.metric_history(summary["run_id"], "incumbent_loss")]
    assert steps == list(range(ITERATIONS + 1))  # every iteration recorded exactly once across both processes

    computed = {int(k): v for k, v in summary["work"]["loss_computed_by_iteration"].items()}
    for iteration in done_before_kill:  # their loss evaluations came from the task cache
        assert computed[iteration] == 0, (computed, rerun.stdout[-3000:])
    assert summary["work"]["cached"]["loss"] >= len(done_before_kill)
    assert sum(computed.values()) >= 1  # the rest was computed after the restart
