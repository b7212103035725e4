"""Signals as service managers and terminals send them, to a real `pmpo optimize`: SIGTERM to the process group
(systemd, `timeout`), SIGTERM to the main process alone (`docker stop`, Kubernetes: PID 1), SIGINT to the group
(Ctrl-C). Each time: one line on stderr, an exit within 10 s, no process left, the MLflow run FAILED; and the next
identical command resumes the run from the cache.

One chain of commands on one run: each resumes what the one before it left and is stopped at its first new step,
and a last one finishes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from pmpo_cli.interrupts import MESSAGE
from support.pipeline import tiny_values

STOPS = [("group", signal.SIGTERM), ("main", signal.SIGTERM), ("group", signal.SIGINT)]
GRACE_S = 10  # Docker's and Kubernetes' default before SIGKILL


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    return env


def _stop_at_first_new_step(argv, env, err: Path, target: str, sig: int) -> tuple[int, float, list[psutil.Process]]:
    """Start the command in a group of its own, signal it once it finished a step it had not cached; returns its exit
    code, the seconds it took to exit, and the processes it had started."""
    with err.open("w") as stderr:
        child = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        for line in child.stdout:
            # A step done, neither cached nor the model load (the run exists by then, and has work left).
            if "✓" in line and "cached" not in line and "load model" not in line:
                break
            assert time.monotonic() < deadline, "no new step finished"
        assert child.poll() is None, "the command ended before it was signalled"
        started = psutil.Process(child.pid).children(recursive=True)
        assert started, "expected the temporary Prefect API server among the command's processes"
        sent = time.monotonic()
        if target == "group":
            os.killpg(child.pid, sig)
        else:
            os.kill(child.pid, sig)
        code = child.wait(60)
        return code, time.monotonic() - sent, started
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)
        child.stdout.close()


def _left(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(p.cmdline())[:120])
        except psutil.NoSuchProcess:
            pass
    return alive


def test_each_stop_signal_exits_quickly_in_one_line_and_the_run_resumes(tmp_path, tiny_model_dir, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_values(tiny_model_dir, task="signals", iterations=3)))
    env = _env(tmp_path)
    argv = [sys.executable, "-m", "pmpo_cli.main", "optimize", "--config", str(config)]
    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    for target, sig in STOPS:
        err = tmp_path / f"stderr-{target}-{sig.name}.txt"
        code, seconds, started = _stop_at_first_new_step(argv, env, err, target, sig)
        what = f"{sig.name} to the {target} process"
        assert code == 130, f"{what}: exit {code}: {err.read_text()[-2000:]}"
        assert seconds < GRACE_S, f"{what}: took {seconds:.1f}s to exit"
        assert err.read_text().splitlines() == [f"pmpo: error: {MESSAGE}"], f"{what}: {err.read_text()[-2000:]}"
        time.sleep(0.5)  # the last child's exit status is collected by init
        assert not _left(started), f"{what} left {_left(started)}"
        runs = queries.list_runs("signals")
        assert [r["status"] for r in runs] == ["FAILED"], f"{what}: {runs}"  # one run, marked for resuming

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("cached") >= len(STOPS)  # the steps finished before each stop are not redone
    runs = queries.list_runs("signals")
    assert [r["status"] for r in runs] == ["FINISHED"]  # the same run, resumed and finished
