"""Scoring through an inference server vs in-process, on the same model, texts and threads.

    python benchmarks/bench_remote.py              # 13 candidates x 50 examples in-process; the server on a slice
    python benchmarks/bench_remote.py --server-candidates 13 --server-examples 50   # the whole workload (slow)
    python benchmarks/bench_remote.py --json       # the figures as JSON

Server: llama-cpp-python (the one third-party completions server that runs here) on the bundled GGUF
(SmolLM2-135M Q4_1) with `--n_threads` = `--threads`; in-process: the same model in fp32 with as many torch
threads. Texts are identical on both sides: placement plain, each prompt beginning with SmolLM2's BOS token
(the only texts llama.cpp scores right: see pmpo.remote.check), so `prepend_bos` adds nothing.
llama-cpp-python's echo path sorts the whole vocabulary in Python for every echoed token, so it is far slower
per token than its own forward pass; by default it scores a slice, and the ratio is per scored text on that
same slice. Prefix cache: the server keeps the KV of its last request's longest common prefix; the saving is
the time of one candidate's texts sent back to back (the prompt's KV reused) against the same number of texts
that alternate between candidates (nothing beyond BOS reused).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import Timer  # noqa: E402

from pmpo.models.loading import ModelSettings, TextSide, load_model  # noqa: E402
from pmpo.remote import CompletionsClient, RemoteScorer  # noqa: E402
from pmpo.scoring.loss import Scorer, example_rows  # noqa: E402
from pmpo.text.encoding import render_pairs  # noqa: E402
from testkit.llama_server import llama_process  # noqa: E402  (tests/: the one launcher of the server)

BOS = "<|im_start|>"  # SmolLM2's BOS token


@dataclass(frozen=True)
class Figures:
    """What the benchmark prints."""

    source: str
    threads: int
    local_full_s: float  # in-process fp32, all candidates x examples
    local_full_texts: int
    slice_texts: int  # texts the server scored (candidates x examples of the slice)
    local_slice_s: float  # in-process, the same slice (fresh scorer)
    server_slice_s: float
    server_vs_local: float  # server time / in-process time on the slice
    # CPU seconds (this process for in-process, the server process for the server): wall time on a shared
    # machine swings with the other load, CPU time much less
    local_slice_cpu_s: float
    server_slice_cpu_s: float
    server_vs_local_cpu: float
    server_full_estimate_s: float  # the slice's rate over the whole workload
    prefix_sequential_cpu_s: float  # server CPU (median of 3), one candidate's texts back to back (its KV reused)
    prefix_alternating_cpu_s: float  # server CPU (median of 3), as many texts alternating between two candidates
    prefix_saving: float  # 1 - sequential / alternating
    spearman_slice: float  # rank agreement of the slice's candidates, server vs in-process
    largest_relative_loss_difference: float


def main() -> None:
    """Run the benchmark and print its figures."""
    args = _args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the server it started
    torch.set_num_threads(args.threads)
    work = wl.build(args.task, args.candidates, args.examples)
    prompts = [BOS + p for p in work.zero_shot]
    lm = load_model(ModelSettings(dtype="float32", placement="plain"))
    with Timer() as full:
        Scorer(lm).loss_matrix(prompts, list(work.train))
    sl_prompts, sl_examples = prompts[: args.server_candidates], list(work.train[: args.server_examples])
    with Timer() as local_slice:
        local = Scorer(lm).loss_matrix(sl_prompts, sl_examples)
    text = TextSide(lm.tokenizer, "plain", lm.context_length)
    with llama_process(Path(tempfile.mkdtemp()) / "llama.log", threads=args.threads) as (url, pid):
        client = CompletionsClient(
            ModelSettings(
                backend="openai", base_url=url, model="smol", prepend_bos=True, max_concurrency=1, timeout_s=600
            )
        )
        RemoteScorer(text, client).served.facts()  # the self-check, outside the timings
        cpu_before = _cpu_seconds(pid)
        with Timer() as server:
            remote = RemoteScorer(text, client).loss_matrix(sl_prompts, sl_examples)
        server_cpu = _cpu_seconds(pid) - cpu_before
        sequential, alternating = _prefix_cache(client, pid, lm.tokenizer, prompts, list(work.train), args.prefix_texts)
    n_full, n_slice = len(prompts) * len(work.train), len(sl_prompts) * len(sl_examples)
    figures = Figures(
        source=work.source,
        threads=args.threads,
        local_full_s=full.wall,
        local_full_texts=n_full,
        slice_texts=n_slice,
        local_slice_s=local_slice.wall,
        server_slice_s=server.wall,
        server_vs_local=server.wall / local_slice.wall,
        local_slice_cpu_s=local_slice.cpu,
        server_slice_cpu_s=server_cpu,
        server_vs_local_cpu=server_cpu / local_slice.cpu,
        server_full_estimate_s=server.wall / n_slice * n_full,
        prefix_sequential_cpu_s=sequential,
        prefix_alternating_cpu_s=alternating,
        prefix_saving=1 - sequential / alternating,
        spearman_slice=_spearman(remote.prompt_loss(), local.prompt_loss()),
        largest_relative_loss_difference=float(np.max(np.abs(remote.loss - local.loss) / local.loss)),
    )
    print(json.dumps(asdict(figures), indent=2) if args.json else _table(figures))


def _prefix_cache(
    client: CompletionsClient, pid: int, tok, prompts: list[str], examples: list, n: int, rounds: int = 3
) -> tuple[float, float]:
    """Median server CPU seconds over `rounds` for n texts of one candidate back to back, and for n texts
    alternating between two candidates (half of them the same texts; every text about as long)."""
    pairs = [(example_rows(e)[0], example_rows(e)[1][0]) for e in examples[:n]]
    a = [t for t, _ in render_pairs(tok, "plain", prompts[1], pairs)]
    b = [t for t, _ in render_pairs(tok, "plain", prompts[2], pairs)]
    orders = {"same": a, "mixed": [(b if i % 2 else a)[i] for i in range(n)]}
    spent: dict[str, list[float]] = {"same": [], "mixed": []}
    for r in range(rounds):
        for name in ("same", "mixed") if r % 2 == 0 else ("mixed", "same"):  # alternate which goes first
            client.complete([prompts[-1] + "\n\nwarm"])  # the same start state for both orders
            start = _cpu_seconds(pid)
            for t in orders[name]:
                client.complete([t])
            spent[name].append(_cpu_seconds(pid) - start)
    return float(np.median(spent["same"])), float(np.median(spent["mixed"]))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else float("nan")


def _table(f: Figures) -> str:
    return "\n".join(
        [
            f"workload: {f.source}; {f.threads} thread(s) for both sides",
            f"in-process fp32, {f.local_full_texts} texts: {f.local_full_s:.1f} s",
            f"slice of {f.slice_texts} texts: in-process {f.local_slice_s:.1f} s, llama.cpp server {f.server_slice_s:.1f} s "
            f"-> server / in-process = {f.server_vs_local:.1f}x wall",
            f"  CPU seconds: in-process {f.local_slice_cpu_s:.1f}, server {f.server_slice_cpu_s:.1f} -> {f.server_vs_local_cpu:.1f}x",
            f"server on the whole workload (slice rate): ~{f.server_full_estimate_s:.0f} s",
            f"prefix cache (server CPU): back to back {f.prefix_sequential_cpu_s:.1f} s vs alternating "
            f"{f.prefix_alternating_cpu_s:.1f} s -> saving {100 * f.prefix_saving:.0f}%",
            f"slice parity: Spearman {f.spearman_slice:.2f}, largest relative loss difference {f.largest_relative_loss_difference:.3f}",
        ]
    )


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh (else builtin sentiment)"
    )
    p.add_argument("--candidates", type=int, default=13)
    p.add_argument("--examples", type=int, default=50)
    p.add_argument("--server-candidates", type=int, default=4, help="candidates the server scores (default 4)")
    p.add_argument("--server-examples", type=int, default=5, help="examples the server scores (default 5)")
    p.add_argument("--prefix-texts", type=int, default=6, help="texts in each prefix-cache order")
    p.add_argument("--threads", type=int, default=2, help="torch threads in-process, --n_threads on the server")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    main()
