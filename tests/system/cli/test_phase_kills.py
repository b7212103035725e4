"""A SIGKILL at a random point of each phase of `pmpo optimize` in turn (model load, mask, rewrite, loss, evaluate,
register), then the same command again: the run resumes and finishes, every candidate is stored once, every
iteration is recorded once, and one prompt version is registered."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

import support
from support.pipeline import tiny_values

DRIVER = Path(support.__file__).with_name("phase_driver.py")
ITERATIONS = 2
# Each phase is entered when the driver prints its line; the kill lands a random moment later, within the
# phase's window (seconds). `register` is what follows the last held-out evaluation (final metrics, the plot, the
# registry): it is short, so its window is too.
PHASES = {
    "load": ("PHASE start load model", 0.8),
    "mask": ("PHASE start mask iter=1", 0.8),
    "rewrite": ("PHASE start rewrite iter=1", 0.8),
    "loss": ("PHASE start loss iter=1", 0.8),
    "evaluate": ("PHASE start evaluate initial", 0.8),
    "register": ("PHASE done evaluate final", 0.15),
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    return env


def _kill_during(argv: list[str], env: dict[str, str], marker: str, window: float, rng: random.Random) -> bool:
    """Run until `marker` is printed, then SIGKILL the process group a random moment later; False if it ended first."""
    child = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        for line in child.stdout:
            if line.startswith(marker):
                time.sleep(rng.uniform(0.0, window))
                return child.poll() is None
            assert time.monotonic() < deadline, f"{marker!r} never came"
        return False
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()


def test_a_kill_in_each_phase_in_turn_then_a_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, monkeypatch):
    # One chain instead of a fresh run per phase: each command resumes what the one before it left, and is killed in
    # the next phase, so every phase's kill is followed by a resume (six commands and a last one that finishes).
    config = tmp_path / "run.yaml"
    # Held-out answers long enough that evaluating takes a few seconds: a kill can land inside it.
    values = tiny_values(
        tiny_model_dir, iterations=ITERATIONS, task="phases", eval={"max_examples": 24, "max_new_tokens": 24}
    )
    config.write_text(yaml.safe_dump(values))
    env = _env(tmp_path)
    out = tmp_path / "summary.json"
    argv = [sys.executable, str(DRIVER), "optimize", "--config", str(config), "--output", str(out)]
    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import prompts, queries

    killed = [phase for phase in PHASES if _kill_during(argv, env, *PHASES[phase], random.Random(phase))]
    # A short phase (register) may end before its kill lands; the chain still killed the others mid-phase.
    assert len(killed) >= len(PHASES) - 1, f"only {killed} were killed before the run finished"

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(out.read_text())

    runs = queries.list_runs("phases")
    assert [r["run_id"] for r in runs] == [summary["run_id"]] and runs[0]["status"] == "FINISHED"
    rows = queries.run_candidates(summary["run_id"])
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == summary["n_candidates"]  # each candidate once, none lost
    assert ids == [c["id"] for c in summary["candidates"]]
    steps = [s for s, _ in queries.metric_history(summary["run_id"], "incumbent_loss")]
    assert steps == list(range(ITERATIONS + 1))  # every iteration recorded exactly once
    assert prompts.version_numbers(summary["prompt_name"]) == [summary["prompt_version"]] == [1]
