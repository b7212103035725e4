"""What feeding a question once for all its options saves: multiple-choice scoring with and without `share_inputs`.

    python benchmarks/bench_options.py                 # the four BIG-bench multiple-choice samples, 6 prompts x 50
    python benchmarks/bench_options.py --examples 10 --prompts 2   # smoke run

The scorer packs short sequences into rows under one shared prompt (pmpo.scoring.batching). With `share_inputs`
(the default) a row feeds an example's input once, then each option after it; without, each option follows its
own copy of the question, as every option of a multiple-choice example used to. Both layouts score the same
prompts (the task's instruction and fixed edits of it, benchmarks/workload.py) on the same training examples in one
run, one after the other, with fresh scorers; the table gives the tokens run through the model, the wall seconds,
their ratios (without / with) and the largest difference of any example's loss between the layouts (float noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload as wl  # noqa: E402

from pmpo.models.loading import ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer, ScorerSettings  # noqa: E402

TASKS = ("navigate", "logical_deduction_three_objects", "sports_understanding", "date_understanding")


def main(argv: list[str] | None = None) -> None:
    """Score each task's prompts both ways and print the table."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(ModelSettings(dtype=args.dtype))
    print(f"SmolLM2 ({lm.dtype}), {args.prompts} prompts x {args.examples} training examples per task")
    print(
        f"{'task':34} {'tokens with':>12} {'without':>10} {'x tokens':>9} {'s with':>8} {'without':>8} "
        f"{'x time':>7} {'max |d loss|':>12}"
    )
    totals = np.zeros(4)
    for task in args.tasks:
        work = wl.build(task, args.prompts, args.examples)
        prompts = list(work.zero_shot)
        Scorer(lm).loss_matrix(prompts[:1], work.train[:2])  # warm-up (kernels, chat template)
        runs = {share: _score(lm, prompts, work.train, share) for share in (True, False)}
        (loss_on, tok_on, s_on), (loss_off, tok_off, s_off) = runs[True], runs[False]
        totals += (tok_on, tok_off, s_on, s_off)
        diff = float(np.nanmax(np.abs(loss_on - loss_off)))
        print(
            f"{task:34} {tok_on:>12,} {tok_off:>10,} {tok_off / tok_on:>9.2f} {s_on:>8.1f} {s_off:>8.1f} "
            f"{s_off / s_on:>7.2f} {diff:>12.2e}"
        )
    on, off, s_on, s_off = totals
    print(f"{'all':34} {int(on):>12,} {int(off):>10,} {off / on:>9.2f} {s_on:>8.1f} {s_off:>8.1f} {s_off / s_on:>7.2f}")


def _score(lm, prompts, examples, share: bool) -> tuple[np.ndarray, int, float]:
    """(loss matrix, tokens run through the model, wall seconds) of one fresh scorer."""
    scorer = Scorer(lm, ScorerSettings(share_inputs=share))
    start = time.perf_counter()
    loss = scorer.loss_matrix(prompts, examples).loss
    return loss, scorer.tokens_computed, time.perf_counter() - start


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS), help="comma-separated BIG-bench tasks")
    p.add_argument("--prompts", type=int, default=6, help="prompts scored per task (the instruction, then edits)")
    p.add_argument("--examples", type=int, default=50, help="training examples per task")
    p.add_argument("--dtype", default="auto", help="the scorer's dtype (auto: bf16 where the CPU has it)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
