"""Loss-evaluation benchmark: pmpo's scorer vs the naive loop, loss- vs generation-based selection, racing.

    python benchmarks/bench_loss.py            # full run, prints a table (~25 min on 2 busy cores)
    python benchmarks/bench_loss.py --json     # the same figures as JSON (--json-out FILE: both at once)
    python benchmarks/bench_loss.py --quick    # smoke run: 3 candidates x 10 examples
    python benchmarks/bench_loss.py --threads 1  # on a machine other processes keep busy: with one OpenMP
                                                 # thread per core they stall each other, 3-5x slower here

Workload (see workload.py): 13 candidates x 50 training examples, zero-shot and with a ~500-token 3-shot
prompt. The naive loop (pmpo.scoring.reference.naive_nll: one example at a time, fp32, full logits) is too slow to
run on all 650 pairs of both workloads on 2 cores, so it runs on a subset and its tokens/s is compared with
the scorer's on the whole workload; tokens/s counts the tokens a per-example loop feeds (prompt + input +
target of every pair), so both rates are over the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import ModelShape, Timer, matmul_peak, pair_lengths, peak_rss_gib  # noqa: E402
from report import MAX_RSS_GIB, TARGETS, table  # noqa: E402

from pmpo.data import Dataset  # noqa: E402
from pmpo.evaluation.matching import is_correct, task_labels  # noqa: E402
from pmpo.models.generation import greedy  # noqa: E402
from pmpo.models.loading import ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer, example_rows  # noqa: E402
from pmpo.scoring.racing import RacingSettings, race, race_losses  # noqa: E402
from pmpo.scoring.reference import naive_nll  # noqa: E402
from pmpo.text.rendering import render  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table (or JSON)."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    n_cand, n_ex = (3, 10) if quick else (args.candidates, args.examples)
    report: dict = {"machine": _machine(), "quick": quick}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.json else (lambda *a: None)

    with Timer() as t:
        peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    report["peak_gflops"] = {"float32": asdict(peak32), "bfloat16": asdict(peak16), "seconds": t.wall}
    lm = load_model(ModelSettings())
    lm32 = lm if lm.dtype == torch.float32 else load_model(ModelSettings(dtype="float32"))
    report["scorer_dtype"] = str(lm.dtype).removeprefix("torch.")
    shape = ModelShape.of(lm)

    rewrites, rewrite_seconds = ([], 0.0) if quick or args.no_rewrites else _rewrites(lm, args.task, n_ex)
    work = wl.build(args.task, n_cand, n_ex, rewrites)
    report["workload"] = {
        "source": work.source,
        "candidates": len(work.zero_shot),
        "examples": len(work.train),
        "variants": work.variant_origin,
        "rewrite_seconds": rewrite_seconds,
    }
    log(f"workload: {work.source}, {len(work.zero_shot)} x {len(work.train)}")

    matrices = {}
    for name, prompts in (("zero_shot", work.zero_shot), ("few_shot", work.few_shot)):
        pairs = pair_lengths(lm, prompts, work.train)
        scorer = Scorer(lm)
        with Timer() as t:
            matrices[name] = scorer.loss_matrix(list(prompts), work.train)
        log(f"{name}: scorer {t.wall:.1f}s")
        n_prompts, per_prompt = (2, 3) if quick else (args.naive_prompts, args.naive_examples)
        subset = _naive_subset(len(prompts), len(pairs.seqs[0]), n_prompts, per_prompt)
        naive = _run_naive(lm32, prompts, work.train, subset)
        log(f"{name}: naive {naive.wall:.1f}s on {len(subset)} pairs")
        report[name] = _throughput(pairs, shape, scorer, t, naive, subset, [peak32, peak16])
    report["speedup_zero_shot"] = report["zero_shot"]["speedup"]
    report["speedup_few_shot"] = report["few_shot"]["speedup"]
    report["fraction_of_peak"] = min(report[w]["fraction_of_peak"] for w in ("zero_shot", "few_shot"))

    loss_seconds = report["zero_shot"]["scorer_seconds"]
    report["selection"] = _selection(lm, work, matrices["zero_shot"], loss_seconds, n_gen=args.gen_tokens)
    report["selection_cost_ratio"] = report["selection"]["cost_ratio"]
    log(f"selection: generation {report['selection']['generation_seconds']:.1f}s")
    report["racing"] = _racing(lm, work, matrices, loss_seconds, perms=20 if quick else 200)
    report["peak_rss_gib"] = peak_rss_gib()
    report["targets_met"] = {k: report[k] >= v for k, v in TARGETS.items()} | {
        "peak_rss_gib": report["peak_rss_gib"] < MAX_RSS_GIB
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2) if args.json else table(report))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--json-out", help="also write the JSON report to this file")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 candidates x 10 examples, small subsets")
    p.add_argument("--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh")
    p.add_argument("--candidates", type=int, default=13)
    p.add_argument("--examples", type=int, default=50)
    p.add_argument("--naive-prompts", type=int, default=3, help="prompts of the naive-loop subset")
    p.add_argument("--naive-examples", type=int, default=8, help="examples per prompt of the naive-loop subset")
    # 64: SmolLM2 states its answer within a sentence or two, or starts reasoning and would need far more.
    p.add_argument("--gen-tokens", type=int, default=64, help="max new tokens of generation-based selection")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads for everything (0: torch's default, one per core)"
    )
    p.add_argument("--no-rewrites", action="store_true", help="fixed edits only, no pmpo.rewriting.proposal variants")
    return p.parse_args(argv)


def _machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],
    }


def _rewrites(lm, task: str, n_examples: int) -> tuple[list[str], float]:
    """Real variants: pmpo.rewriting.proposal on the incumbent's 3 hardest examples, 4 samples each (seeded)."""
    try:
        from pmpo.rewriting.proposal import RewriteSettings, hard_examples, propose
    except ImportError:
        return [], 0.0
    _, dataset = wl.load_task(task)
    from pmpo.data import split_dataset

    train = split_dataset(dataset, seed=0).train.examples[:n_examples]
    incumbent = wl.incumbent_of(dataset)
    variants: list[str] = []
    with Timer() as t:
        losses = Scorer(lm).loss_matrix([incumbent], train).loss[0]
        for rank, index in enumerate(hard_examples(list(losses), 3)):
            proposal = propose(
                lm,
                prompt=incumbent,
                example=train[index],
                effects=(),
                task_description=dataset.description,
                settings=RewriteSettings(),
                seed=1000 + rank,
                seen=set(variants),
            )
            variants.extend(proposal.variants)
    return variants, t.wall


def _naive_subset(n_prompts: int, n_pairs: int, prompts: int, per_prompt: int) -> list[tuple[int, int]]:
    """Pairs spread over the candidate list (first, middle, last...) and the first examples."""
    chosen = sorted({round(i * (n_prompts - 1) / max(1, prompts - 1)) for i in range(min(prompts, n_prompts))})
    return [(p, k) for p in chosen for k in range(min(per_prompt, n_pairs))]


def _run_naive(lm32, prompts, examples, subset) -> Timer:
    flat = [(inp, c) for e in examples for inp, comps, _ in [example_rows(e)] for c in comps]
    with Timer() as t:
        for p, k in subset:
            naive_nll(lm32, prompts[p], *flat[k])
    return t


def _throughput(pairs, shape, scorer, t, naive, subset, peaks) -> dict:
    tokens = pairs.workload_tokens()
    naive_tokens = pairs.workload_tokens(subset)
    scorer_rate, naive_rate = tokens / t.wall, naive_tokens / naive.wall
    flops = pairs.scorer_flops(shape)
    best_wall, best_cpu = max(p.wall for p in peaks), max(p.cpu for p in peaks)
    return {
        "prefix_tokens_mean": float(np.mean(pairs.prefix)),
        "workload_tokens": tokens,
        "tokens_computed": scorer.tokens_computed,
        "scorer_seconds": t.wall,
        "scorer_cpu_seconds": t.cpu,
        "scorer_tokens_per_s": scorer_rate,
        "naive_pairs_measured": len(subset),
        "naive_seconds": naive.wall,
        "naive_tokens_per_s": naive_rate,
        "naive_seconds_extrapolated": tokens / naive_rate,
        "speedup": scorer_rate / naive_rate,
        "speedup_cpu_time": (tokens / t.cpu) / (naive_tokens / naive.cpu),
        "scorer_gflops": flops / t.wall / 1e9,
        "naive_gflops": pairs.naive_flops(shape, subset) / naive.wall / 1e9,
        # Per CPU-second, so the share of the cores other processes took does not count against it.
        "fraction_of_peak": flops / t.cpu / 1e9 / best_cpu,
        "fraction_of_peak_wall": flops / t.wall / 1e9 / best_wall,
        "fraction_of_bf16_peak": flops / t.wall / 1e9 / peaks[1].wall,
    }


def _selection(lm, work, matrix, loss_seconds: float, n_gen: int) -> dict:
    """Pick the best of the candidates by loss (done above) and by greedy generation + exact match."""
    prompts, examples = work.zero_shot, work.train
    contexts = [render(lm.tokenizer, lm.placement, p, e.input).text for p in prompts for e in examples]
    with Timer() as t:
        outputs = greedy(lm, contexts, max_new_tokens=n_gen)
    flat = [e for _ in prompts for e in examples]
    strict = np.array([is_correct(o, e) for o, e in zip(outputs, flat)]).reshape(len(prompts), -1).mean(axis=1)
    labels = task_labels(Dataset("train", tuple(examples)))
    accuracy = np.array([is_correct(o, e, "contains", labels) for o, e in zip(outputs, flat)])
    accuracy = accuracy.reshape(len(prompts), -1).mean(axis=1)
    by_loss = int(np.argmin(matrix.prompt_loss()))
    by_accuracy = int(np.argmax(accuracy))  # first of the tied best, as a plain argmax loop would do
    return {
        "generation_seconds": t.wall,
        "loss_seconds": loss_seconds,
        "cost_ratio": t.wall / loss_seconds,
        "max_new_tokens": n_gen,
        "by_loss": by_loss,
        "by_accuracy": by_accuracy,
        "same_pick": by_loss == by_accuracy,
        "accuracy": accuracy.tolist(),  # reference contained in the reply (APE's "contains" metric)
        "accuracy_exact": strict.tolist(),  # pmpo.evaluation.matching.is_correct: first line, normalised exact match
        "accuracy_of_loss_pick": float(accuracy[by_loss]),
        "loss_pick_ties_best_accuracy": bool(accuracy[by_loss] == accuracy.max()),
        "loss": matrix.prompt_loss().tolist(),
    }


def _racing(lm, work, matrices, full_seconds: float, perms: int) -> dict:
    """Racing's real speed-up on the zero-shot set, and how often it changes the pick (simulated orders)."""
    settings = RacingSettings(enabled=True)
    scorer = Scorer(lm)
    with Timer() as t:
        raced = race(scorer, list(work.zero_shot[1:]), work.train, settings, incumbent=work.zero_shot[0])
    full = matrices["zero_shot"].prompt_loss()
    race_pick = _pick(full[0], raced)
    out = {
        "settings": settings.model_dump(),
        "seconds": t.wall,
        "speedup": full_seconds / t.wall,
        "dropped": sum(v is None for v in raced),
        "same_pick": race_pick == _pick(full[0], list(full[1:])),
        "simulated": {},
    }
    rng = np.random.default_rng(0)
    for name, matrix in matrices.items():
        for first, margin in ((10, 3.0), (10, 2.0), (5, 3.0), (10, 1.0)):
            s = RacingSettings(enabled=True, first_slice=first, margin=margin)
            out["simulated"][f"{name}/first={first}/margin={margin}"] = _simulate(matrix.loss, s, perms, rng)
    return out


def _pick(incumbent_loss: float, losses: list[float | None]) -> int:
    """PMPO's selection: the best variant if strictly below the incumbent (index 0), else the incumbent."""
    known = [(v, i + 1) for i, v in enumerate(losses) if v is not None]
    best = min(known, default=None)
    return best[1] if best is not None and best[0] < incumbent_loss else 0


def _simulate(loss: np.ndarray, settings: RacingSettings, perms: int, rng) -> dict:
    """Race on shuffled example orders of a full loss matrix: same pick as full scoring, and pairs scored."""
    full_pick = _pick(loss[0].mean(), list(loss[1:].mean(axis=1)))
    same, scored = 0, 0
    for _ in range(perms):
        shuffled = loss[:, rng.permutation(loss.shape[1])]
        seen = np.zeros(loss.shape[0], dtype=int)

        def losses(candidates, n, m=shuffled, seen=seen):
            seen[list(candidates)] = np.maximum(seen[list(candidates)], n)
            return m[list(candidates), :n]

        raced = race_losses(losses, loss.shape[0], loss.shape[1], settings, always_keep=0)
        same += _pick(raced[0], raced[1:]) == full_pick
        scored += seen.sum()
    return {"same_pick": same / perms, "pairs_scored": scored / perms / loss.size}


if __name__ == "__main__":
    main()
