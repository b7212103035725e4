"""How often racing changes PMPO's pick, over every BIG-bench sample in ../shared/data/bbh.

    python benchmarks/bench_racing.py [--threads 1] [--json]

For each task: the incumbent (the task's instruction) and 12 pmpo.rewriting.proposal variants of it (SmolLM2 as the
rewriter, seeded; fixed edits fill the set where fewer come back), scored in full on the 50 training
examples; then racing is replayed on that loss matrix over 200 shuffled example orders per setting, and
compared with full scoring's pick. A replay scores exactly what the scorer would, since racing only reads
per-example losses. bench_loss.py measures racing's wall-clock speed-up; this measures its risk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from bench_loss import _rewrites, _simulate  # noqa: E402
from measure import Timer  # noqa: E402

from pmpo.models.loading import load_model  # noqa: E402
from pmpo.scoring.loss import Scorer  # noqa: E402
from pmpo.scoring.racing import RacingSettings  # noqa: E402

SETTINGS = [(10, 3.0), (10, 2.0), (5, 3.0), (10, 1.0)]  # (first_slice, margin); the default first


def main(argv: list[str] | None = None) -> None:
    """Score each task's candidate set and replay racing on it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tasks", nargs="*", help="task names (default: every sample in ../shared/data/bbh)")
    p.add_argument("--perms", type=int, default=200, help="shuffled example orders per setting")
    args = p.parse_args(argv)
    if not wl.BBH_DIR.is_dir():
        sys.exit(f"no BIG-bench samples at {wl.BBH_DIR}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = args.tasks or sorted(f.removesuffix(".jsonl") for f in os.listdir(wl.BBH_DIR) if f.endswith(".jsonl"))
    lm = load_model()
    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        rewrites, _ = _rewrites(lm, task, 50)
        work = wl.build(task, 13, 50, rewrites)
        with Timer() as t:
            loss = Scorer(lm).loss_matrix(list(work.zero_shot), work.train).loss
        row = {"task": task, "rewrites": len(rewrites), "scoring_seconds": t.wall}
        for first, margin in SETTINGS:
            s = RacingSettings(enabled=True, first_slice=first, margin=margin)
            row[f"first={first}/margin={margin}"] = _simulate(loss, s, args.perms, rng)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))


def _table(rows: list[dict]) -> str:
    keys = [f"first={f}/margin={m}" for f, m in SETTINGS]
    lines = [f"{'task':<34}{'rewrites':>9}  " + "  ".join(f"{k:>28}" for k in keys)]
    for r in rows:
        cells = "  ".join(f"{r[k]['same_pick']:>11.3f} same {r[k]['pairs_scored']:>5.2f} work" for k in keys)
        lines.append(f"{r['task']:<34}{r['rewrites']:>9}  {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
