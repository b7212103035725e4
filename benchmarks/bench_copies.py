"""How often the bundled model's rewrites copy the hard example, by the length of the copied run (3..8 words).

    python benchmarks/bench_copies.py --threads 1                  # sentiment + sports_understanding, ~3 min
    python benchmarks/bench_copies.py --tasks builtin:sentiment --requests 2   # smoke run

For each task, `--requests` training examples are each shown to the rewriter as the hard example in the SHORT
request (the one the bundled model gets), sampled `--variants` times with a fixed seed. The usable variants (the
filter's other reasons applied, copying not) are checked against the example the request showed: for each run
length N, how many would be rejected as `copies_example`, with a few of them and the words they copied. The
threshold `pmpo.rewriting.copying.COPY_RUN_WORDS` is chosen from this table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pmpo.data import load_dataset, split_dataset
from pmpo.models.loading import load_model
from pmpo.rewriting import proposal
from pmpo.rewriting.copying import copied_run, example_texts
from pmpo.rewriting.replies import filter_variants
from pmpo.rewriting.requests import build_request
from pmpo.rewriting.settings import RewriteSettings

BBH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bbh"
RUNS = range(3, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["builtin:sentiment", "sports_understanding"])
    parser.add_argument("--requests", type=int, default=6, help="hard examples shown per task")
    parser.add_argument("--variants", type=int, default=4, help="replies sampled per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", type=int, default=3, help="examples printed per N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    settings = RewriteSettings(template="short", n_variants=args.variants)
    start = time.perf_counter()
    for task in args.tasks:
        _task(lm, task, settings, args)
    print(f"\n{time.perf_counter() - start:.0f} s")


def _task(lm, task: str, settings: RewriteSettings, args: argparse.Namespace) -> None:
    source = task if task.startswith("builtin:") else BBH / f"{task}.jsonl"
    dataset = load_dataset(source)
    train = split_dataset(dataset, seed=args.seed).train
    prompt = dataset.default_prompt or dataset.description
    checked: list[tuple[str, tuple[str, ...]]] = []
    for i, example in enumerate(train.examples[: args.requests]):
        message = build_request(
            "short", task_description=dataset.description, example=example, prompt=prompt, effects=()
        )
        replies, cut_off = proposal._local_replies(lm, message, settings, "short", prompt, args.seed + i, True)
        variants, _ = filter_variants(
            replies, current=prompt, seen=(), max_chars=settings.max_prompt_chars, opened=True, cut_off=cut_off
        )
        checked += [(v, example_texts(example)) for v in variants]
    print(f"\n## {task}: {len(checked)} usable variants from {args.requests} requests (prompt: {prompt!r})")
    for n in RUNS:
        hits = [(v, run) for v, texts in checked if (run := copied_run(v, texts, prompt=prompt, n=n))]
        print(f"N={n}: {len(hits)}/{len(checked)} rejected")
        for variant, run in hits[: args.show]:
            print(f"    [{run}]  {variant[:160]!r}")


if __name__ == "__main__":
    main()
