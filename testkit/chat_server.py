"""Start `transformers serve` (it ships with transformers) on the bundled SmolLM2 checkpoint: a real chat server."""

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from testkit.echo_server import free_port


@dataclass(frozen=True)
class ChatServer:
    """A running chat server: its API root and the name it serves the checkpoint under (its directory)."""

    base_url: str
    model: str


@contextlib.contextmanager
def transformers_serve(log: Path, *, threads: int = 2, timeout_s: float = 240) -> Iterator[ChatServer]:
    """Run `transformers serve` until the block ends (offline, on the CPU, `threads` torch threads)."""
    from pmpo.models.bundled import bundled_checkpoint

    directory, _ = bundled_checkpoint()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true", "OMP_NUM_THREADS": str(threads)}
    cmd = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        str(directory),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log, timeout_s)
        yield ChatServer(f"http://127.0.0.1:{port}/v1", str(directory))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"transformers serve not healthy after {timeout_s:g} s: {log.read_text()[-2000:]}")
