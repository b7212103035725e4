"""Kill a real `pmpo optimize` process mid-run (SIGKILL: no clean-up runs), run the same command again, and
check that it continued the same MLflow run, stored every candidate once, and recomputed no loss evaluation
it had finished before the kill."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from support.killing import KILL_AFTER_ITERATION, cli_env, command, kill_after_first_iteration, recorded_iterations
from support.pipeline import tiny_values

ITERATIONS = 4  # enough left after the kill point that the kill lands mid-run


def test_killed_run_resumes_without_duplicates_or_recomputation(tmp_path, tiny_model_dir, monkeypatch):
    config = tmp_path / "run.yaml"
    # The paper's strict rule and no early stop: on the random tiny model the noise-floor gate keeps the incumbent,
    # and patience would then end the run early; this test needs every iteration to make new candidates after the kill.
    values = tiny_values(
        tiny_model_dir,
        iterations=ITERATIONS,
        patience=None,
        selection={"gate_z": 0, "keep_accuracy": False, "tempered_gate": False},
    )
    config.write_text(yaml.safe_dump(values))
    env = cli_env(tmp_path)
    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    kill_after_first_iteration(config, tmp_path / "first.json", env, queries, timeout_s=420)
    before = queries.list_runs()
    assert len(before) == 1 and before[0]["status"] == "RUNNING"  # killed: nothing marked it finished
    done_before_kill = sorted(set(recorded_iterations(queries)))
    if done_before_kill[-1] >= ITERATIONS:
        pytest.skip("the machine was too slow to kill the run before it ended")  # pragma: no cover

    rerun = subprocess.run(
        command(config, tmp_path / "second.json"), env=env, capture_output=True, text=True, timeout=600
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
