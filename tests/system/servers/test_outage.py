"""A tracking server that dies mid-run: the run fails in bounded time with one line of error, no tracebacks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import support
from support.pipeline import tiny_values

DRIVER = Path(support.__file__).with_name("phase_driver.py")
BOUND_S = 120  # the retries and timeouts below allow ~15 s; the rest is slack for a busy machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.server
def test_tracking_server_dying_mid_run_fails_it_quickly_with_one_line(tmp_path, tiny_model_dir):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            assert server.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.5)
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(tiny_values(tiny_model_dir, iterations=30)))
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(
            PMPO_HOME=str(tmp_path / "home"),
            PREFECT_HOME=str(tmp_path / "prefect"),
            HF_HUB_OFFLINE="1",
            MLFLOW_TRACKING_URI=url,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
            MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        )
        child = subprocess.Popen(
            [sys.executable, str(DRIVER), "optimize", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in child.stdout:  # the run exists and is being written: iteration 1 is under way
            if line.startswith("PHASE start mask iter=2") or line.startswith("PHASE exit"):
                break
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        died = time.monotonic()
        _, err = child.communicate(timeout=BOUND_S + 60)
        took = time.monotonic() - died
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
    assert child.returncode == 1, err[-3000:]
    assert took < BOUND_S, f"the run took {took:.0f} s to fail after the server died"
    errors = [line for line in err.splitlines() if line.startswith("pmpo: error:")]
    assert len(errors) == 1 and "MLflow tracking store failed" in errors[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
