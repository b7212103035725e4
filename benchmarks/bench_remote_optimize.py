"""A full `pmpo optimize` scored through an inference server and rewritten through a chat server, beside the
same run in-process.

    python benchmarks/bench_remote_optimize.py                  # both runs; a table of their summaries
    python benchmarks/bench_remote_optimize.py --json out.json  # the figures as JSON too

Served: llama-cpp-python on the bundled GGUF (SmolLM2-135M Q4_1, `--logits_all true`, `model.prepend_bos`: the
only way it scores right, pmpo.remote.check) scores; `transformers serve` of the bundled checkpoint rewrites, told
the model's size so the template choice is the in-process one. In-process: the same checkpoint in fp32 scores and
rewrites for itself. Both runs read the same data, prompt, split, seed and iterations, with placement plain
(llama.cpp cannot score chat-template texts: its offsets skip special tokens), each through the CLI a user types
in a fresh PMPO_HOME; the in-process run goes first, while no server is up. Both servers and the CLI share this
machine's cores, so the wall times are what one machine serving itself costs, not what a GPU server gives.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.chat_server import transformers_serve  # noqa: E402  (tests/: the one launcher of each server)
from testkit.llama_server import llama_server  # noqa: E402

# Three sentences, so masking has units to drop (the demo's one-line prompt has none) and the run exercises
# every step: masking analysis, rewrites, candidate losses, held-out loss and accuracy.
PROMPT = "Read the text. Decide whether the review is positive or negative. Answer with one word."


@dataclass(frozen=True)
class Run:
    """One `pmpo optimize`, as its --output summary reports it."""

    name: str
    wall_s: float  # the CLI process, start to exit (model load and server self-check included)
    model_identity: str
    rewriter_identity: str
    best_prompt: str
    initial_loss: float  # training loss, nats per example
    best_loss: float
    n_candidates: int
    heldout_initial_loss: float
    heldout_final_loss: float
    heldout_initial_accuracy: float | None  # None: no generated answers
    heldout_final_accuracy: float | None
    steps_s: dict[str, float]  # seconds per step (mask, rewrite, loss, select, evaluate)


def main() -> None:
    """Run both optimisations and print their summaries side by side."""
    args = _args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the servers this started
    work = Path(tempfile.mkdtemp(prefix="bench-remote-optimize-"))
    flags = [
        "--data",
        args.data,
        "--prompt",
        args.prompt,
        "--iterations",
        str(args.iterations),
        "--seed",
        "0",
        "--train-size",
        str(args.train_size),
        "--eval-examples",
        str(args.eval_examples),
    ]
    runs = [_optimize("in-process", work, {"model": {"placement": "plain", "dtype": "float32"}}, flags)]
    with (
        llama_server(work / "llama.log", threads=args.threads) as score_url,
        transformers_serve(work / "serve.log", threads=args.threads) as chat,
    ):
        served = {
            # one request at a time: llama-cpp-python serves requests one by one, queued ones only wait longer
            "model": {
                "backend": "openai",
                "base_url": score_url,
                "model": "smol",
                "placement": "plain",
                "prepend_bos": True,
                "max_concurrency": 1,
                "timeout_s": 600,
            },
            "rewriter": {
                "backend": "openai",
                "base_url": chat.base_url,
                "model": chat.model,
                "n_params": _n_params(),
                "timeout_s": 600,
                "max_retries": 0,
            },
        }
        runs.append(_optimize("served", work, served, flags))
    print(_table(runs, args))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2))


def _optimize(name: str, work: Path, config: dict, flags: list[str]) -> Run:
    """`pmpo optimize` in a fresh home with `config` (the config file's fields) and `flags`; its summary."""
    home, config_file, output = work / f"home-{name}", work / f"{name}.json", work / f"{name}-summary.json"
    config_file.write_text(json.dumps(config))  # YAML is a superset of JSON
    cmd = [
        str(Path(sys.executable).with_name("pmpo")),
        "optimize",
        "--config",
        str(config_file),
        *flags,
        "--output",
        str(output),
    ]
    env = {**os.environ, "PMPO_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    with open(work / f"{name}.log", "wb") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: pmpo optimize exited {done.returncode}; see {work / f'{name}.log'}")
    return _run(name, wall, json.loads(output.read_text()))


def _run(name: str, wall: float, s: dict) -> Run:
    held = s["heldout"]
    return Run(
        name=name,
        wall_s=wall,
        model_identity=s["model_identity"],
        rewriter_identity=s["rewriter_identity"],
        best_prompt=s["best_prompt"],
        initial_loss=s["initial_loss"],
        best_loss=s["best_loss"],
        n_candidates=s["n_candidates"],
        heldout_initial_loss=held["initial_loss"],
        heldout_final_loss=held["final_loss"],
        heldout_initial_accuracy=held["initial_accuracy"],
        heldout_final_accuracy=held["final_accuracy"],
        steps_s={k: round(v["seconds"], 1) for k, v in s["cost"]["total"]["steps"].items()},
    )


def _n_params() -> int:
    """The bundled model's parameter count (the in-process run's template choice follows it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pmpo.models.bundled import bundled_checkpoint

    directory, _ = bundled_checkpoint()
    with torch.device("meta"):  # no weights: the meta device counts parameters from the config alone
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    return sum(p.numel() for p in model.parameters())


def _table(runs: list[Run], args: argparse.Namespace) -> str:
    def acc(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"data {args.data}, {args.train_size} training / {args.eval_examples} held-out examples, "
        f"{args.iterations} iterations, seed 0, placement plain; {args.threads} threads per server",
        f"{'':<12}{'wall s':>8}{'train loss':>22}{'held-out loss':>22}{'held-out acc':>16}{'cands':>7}  steps (s)",
    ]
    for r in runs:
        lines.append(
            f"{r.name:<12}{r.wall_s:>8.1f}{f'{r.initial_loss:.3f} -> {r.best_loss:.3f}':>22}"
            f"{f'{r.heldout_initial_loss:.3f} -> {r.heldout_final_loss:.3f}':>22}"
            f"{f'{acc(r.heldout_initial_accuracy)} -> {acc(r.heldout_final_accuracy)}':>16}{r.n_candidates:>7}  "
            + ", ".join(f"{k} {v}" for k, v in r.steps_s.items())
        )
    lines.append(f"served / in-process wall time: {runs[1].wall_s / runs[0].wall_s:.1f}x")
    for r in runs:
        lines += [
            f"{r.name}: scored by {r.model_identity}, rewritten by {r.rewriter_identity}",
            f"  best prompt: {r.best_prompt}",
        ]
    return "\n".join(lines)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="builtin:sentiment")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--train-size", type=int, default=8)
    p.add_argument("--eval-examples", type=int, default=20)
    p.add_argument(
        "--threads", type=int, default=2, help="--n_threads of llama.cpp, torch threads of transformers serve"
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return p.parse_args()


if __name__ == "__main__":
    main()
