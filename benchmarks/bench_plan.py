"""The cost plan against the actual cost of the same run: tokens (scored, prefilled, all) and wall time.

For each workload: plan it as `pmpo optimize --dry-run` does (`flows.dry_run.optimize_plan`, calibration
included), then run the same config with the library loop on the same model and the same split, and the held-out
check, and compare. The run keeps going whatever happens (`patience` 0), so the plan's iterations all run; the plan
is a maximum, and its "expected" figures scale the candidates by the share of replies expected to be kept
(`pmpo.loop.keep_rate`: the calibration's replies as evidence), with the range that share leaves.

    python benchmarks/bench_plan.py                       # the demo, then object_counting and navigate
    python benchmarks/bench_plan.py --workloads demo      # the demo only
    python benchmarks/bench_plan.py --json plan.json
    python benchmarks/bench_plan.py --threads 1           # one torch thread: a loaded machine's fairer figures

Targets (issue 20): tokens within 10% of the actual count, wall time within 30%.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

BBH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"
WORKLOADS = {
    "demo": {},
    "object_counting": {"data": {"source": str(BBH / "object_counting.jsonl")}},
    "navigate": {"data": {"source": str(BBH / "navigate.jsonl")}},
}


def _with_prompt(overrides: dict) -> dict:
    """A BIG-bench sample has no default prompt: its own instruction, as the quality benchmark starts from."""
    source = overrides.get("data", {}).get("source")
    if not source or "prompt" in overrides:
        return overrides
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workload as wl

    from pmpo import load_dataset

    return {**overrides, "prompt": wl.incumbent_of(load_dataset(source))}


def measure(name: str, overrides: dict) -> dict:
    """Plan one workload, run it, and compare."""
    from flows.config import OptimizeConfig
    from flows.dry_run import optimize_plan
    from flows.steps import load_data
    from pmpo.evaluation.heldout import evaluate
    from pmpo.loop.optimizer import PMPO
    from tasks.models import loaded, model_ref, scorer
    from tasks.models import usage as model_usage

    config = OptimizeConfig.model_validate({**_with_prompt(overrides), "patience": 0})
    start = time.perf_counter()
    plan = optimize_plan(config)
    plan_s = time.perf_counter() - start

    dataset, split = load_data(config, config.prompt or "", as_task=False)
    prompt = config.prompt or dataset.default_prompt
    ref = model_ref(config.model, config.scoring)
    lm, sc = loaded(ref), scorer(ref)
    sc._memo.clear()  # the calibration's pairs must not make the run cheaper than it is
    before, start = model_usage(ref), time.perf_counter()
    result = PMPO(lm, config, sc).optimize(prompt, split.train)
    heldout = config.eval.examples(split.test, config.seed)
    for p in (result.initial.prompt, result.best.prompt):
        evaluate(lm, p, heldout, scorer=sc, generate=config.eval.generate, max_new_tokens=config.eval.max_new_tokens)
    wall = time.perf_counter() - start
    actual = model_usage(ref) - before

    planned, expected = plan.work, plan.expected_work
    rows = {
        "tokens_scored": (planned.tokens_scored, expected.tokens_scored, actual.tokens_scored),
        "tokens_prefilled": (planned.tokens_prefilled, expected.tokens_prefilled, actual.tokens_prefilled),
        "tokens_generated": (planned.tokens_generated, expected.tokens_generated, actual.tokens_generated),
        "tokens": (
            planned.tokens,
            expected.tokens,
            actual.tokens_scored + actual.tokens_prefilled + actual.tokens_generated,
        ),
        "seconds": (None, plan.total_seconds, wall),
    }
    return {
        "workload": name,
        "iterations": len(result.iterations),
        "candidates": [it.n_candidates for it in result.iterations],
        "improved": [it.improved for it in result.iterations],
        "plan_seconds": plan_s,
        "rates": asdict(plan.rates) if plan.rates else None,
        "expected_candidates": asdict(plan.expected_candidates),
        "expected_tokens": asdict(plan.expected_tokens),
        "rows": {
            k: {"max": m, "expected": e, "actual": a, "expected/actual": (e / a if a else None)}
            for k, (m, e, a) in rows.items()
        },
    }


def main() -> None:
    """Run the chosen workloads and print (or write) plan against actual."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    # On a loaded machine, a thread per core makes each wait on the busiest core: plan and run both get these.
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = []
    for name in args.workloads.split(","):
        figures = measure(name, WORKLOADS[name])
        out.append(figures)
        print(f"\n{name}: {figures['iterations']} iterations, candidates {figures['candidates']}")
        print(f"{'':18}{'plan max':>12}{'plan expected':>15}{'actual':>12}{'expected/actual':>17}")
        for key, r in figures["rows"].items():
            m = "-" if r["max"] is None else f"{r['max']:,.0f}"
            ratio = "-" if r["expected/actual"] is None else f"{r['expected/actual']:.2f}"
            print(f"{key:18}{m:>12}{r['expected']:>15,.0f}{r['actual']:>12,.0f}{ratio:>17}")
        c, t = figures["expected_candidates"], figures["expected_tokens"]
        print(
            f"candidates: expected {c['mean']:.1f} (likely {c['low']:.1f}-{c['high']:.1f}), actual "
            f"{sum(figures['candidates'])}; tokens likely {t['low']:,.0f}-{t['high']:,.0f}",
            flush=True,  # a workload takes minutes: its figures as soon as they are in
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
