"""Kills of a real `pmpo optimize` leave no Prefect API server behind: SIGTERM stops it on the way out; after a
SIGKILL the next command finds the orphan and stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pmpo_cli.ephemeral import _alive, reap_orphans
from support.pipeline import tiny_values


def _start(tmp_path: Path, tiny_model_dir: Path) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_values(tiny_model_dir, iterations=30)))  # far longer than the test waits
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "pmpo_cli.main", "optimize", "--config", str(config)]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return child, tmp_path / "home" / "run"


def _server_pid(notes: Path, child: subprocess.Popen) -> int:
    """The temporary API server's pid, once the command has noted it."""
    deadline = time.monotonic() + 300
    note = notes / f"prefect-api-{child.pid}.json"
    while not note.exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the command never started its Prefect API"
        time.sleep(0.2)
    time.sleep(0.5)  # let the write finish
    return json.loads(note.read_text())["server"]


def _wait_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pid)


def test_sigterm_stops_the_temporary_prefect_server(tmp_path, tiny_model_dir):
    child, notes = _start(tmp_path, tiny_model_dir)
    server = _server_pid(notes, child)
    assert _alive(server)
    child.send_signal(signal.SIGTERM)
    assert child.wait(120) == 130  # an interrupt: "run the same command again to resume"
    assert "interrupted" in child.stderr.read().decode()
    assert _wait_gone(server), "SIGTERM left the Prefect API server running"
    assert not list(notes.glob("prefect-api-*.json"))  # the note went with it


def test_next_command_stops_the_server_a_sigkill_orphaned(tmp_path, tiny_model_dir):
    child, notes = _start(tmp_path, tiny_model_dir)
    server = _server_pid(notes, child)
    child.kill()
    child.wait(30)
    child.stderr.close()
    time.sleep(1)
    assert _alive(server), "expected the SIGKILL to orphan the server (the case the next run must clean up)"
    assert reap_orphans(notes) == [server]  # what the next command does first
    assert _wait_gone(server)
    assert not list(notes.glob("prefect-api-*.json"))


def test_a_live_commands_server_is_left_alone(tmp_path):
    notes = tmp_path / "run"
    notes.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (notes / "prefect-api-1.json").write_text(json.dumps({"owner": os.getpid(), "server": sleeper.pid}))
        (notes / "prefect-api-2.json").write_text(json.dumps({"owner": 2**22 + 1, "server": sleeper.pid}))
        # Owner alive: kept. Owner dead, but the pid is no Prefect server (reused): not killed, note dropped.
        assert reap_orphans(notes) == []
        assert sleeper.poll() is None
        assert [p.name for p in notes.iterdir()] == ["prefect-api-1.json"]
    finally:
        sleeper.kill()
        sleeper.wait()
