"""Where the scorer's time goes: torch.profiler over the zero-shot and 3-shot workloads of bench_loss.py.

    python benchmarks/profile_scorer.py --threads 1                      # 3 candidates x 10 examples each
    python benchmarks/profile_scorer.py --threads 1 --json profile.json --candidates 13 --examples 50

Each operator's self CPU time goes to one bucket: the matmuls (linear layers, LM head, attention's own products),
the fused attention kernel, softmax / log-softmax / cross-entropy, the other tensor operations (norms, rotary
embedding, SiLU, masks, casts, copies), and, outside any operator, tokenisation, batch planning and the rest of
the Python (measured as the profiled time no operator accounts for). The same run measures the bf16 and fp32
matmul peaks and the scorer's fraction of the peak as bench_loss.py does (useful FLOPs per CPU-second over the
best peak per CPU-second), unprofiled, so the profiler's own overhead does not count against it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import ModelShape, Timer, matmul_peak, pair_lengths  # noqa: E402

import pmpo.scoring.loss as loss_module  # noqa: E402
from pmpo.models.loading import ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm", "aten::dot"}
ATTENTION = ("flash_attention", "scaled_dot_product", "efficient_attention")
SOFTMAX = ("softmax", "nll_loss", "cross_entropy", "logsumexp")
ANNOTATED = {"tokenise": "tokenisation", "plan": "batch planning"}


def main(argv: list[str] | None = None) -> None:
    """Profile both workloads and print the table (and JSON)."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    lm = load_model(ModelSettings())
    shape = ModelShape.of(lm)
    work = wl.build(args.task, args.candidates, args.examples)
    peak16, peak32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/profile_scorer.py " + " ".join(argv or sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg()[0],
        "dtype": str(lm.dtype).removeprefix("torch."),
        "peak_gflops_per_cpu_s": {"bfloat16": peak16.cpu, "float32": peak32.cpu},
        "workloads": {},
    }
    best = max(peak16.cpu, peak32.cpu)
    for name, prompts in (("zero_shot", work.zero_shot), ("few_shot", work.few_shot)):
        flops = pair_lengths(lm, prompts, work.train).scorer_flops(shape)
        with Timer() as plain:  # unprofiled: the figure bench_loss.py reports
            Scorer(lm).loss_matrix(list(prompts), work.train)
        with _annotated(), profile(activities=[ProfilerActivity.CPU]) as prof, Timer() as profiled:
            Scorer(lm).loss_matrix(list(prompts), work.train)
        # The profiler times operators by the clock: on a shared machine they stretch with the time-sharing, so
        # shares are of the profiled wall time, and a bucket's CPU seconds are its share of the unprofiled run's.
        buckets = _buckets(prof, profiled.wall)
        shares = {k: v / profiled.wall for k, v in buckets.items()}
        report["workloads"][name] = {
            "candidates": len(prompts),
            "examples": len(work.train),
            "cpu_s": plain.cpu,
            "wall_s": plain.wall,
            "profiled_cpu_s": profiled.cpu,
            "profiled_wall_s": profiled.wall,
            "fraction_of_peak": flops / plain.cpu / 1e9 / best,
            "useful_gflop": flops / 1e9,
            "matmul_gflop": _matmul_flops(prompts, work, lm, shape) / 1e9,
            # The linear layers' and LM head's useful FLOPs over their share of the run's CPU seconds.
            "matmul_fraction_of_peak": _matmul_flops(prompts, work, lm, shape)
            / 1e9
            / max(shares["matmul"] * plain.cpu, 1e-9)
            / best,
            "shares": shares,
            "top_ops": _top(prof, 12),
        }
    report["load_average_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(_table(report))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--examples", type=int, default=10)
    p.add_argument("--task", default="object_counting")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


@contextmanager
def _annotated():
    """Tokenisation and batch planning inside named profiler ranges (they run no tensor operator worth naming)."""
    saved = loss_module.encode_many, loss_module.plan

    def wrap(fn, label):
        def inner(*a, **k):
            with record_function(label):
                return fn(*a, **k)

        return inner

    loss_module.encode_many, loss_module.plan = wrap(saved[0], "tokenise"), wrap(saved[1], "plan")
    try:
        yield
    finally:
        loss_module.encode_many, loss_module.plan = saved


def _bucket(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if any(k in name for k in ATTENTION):
        return "attention kernel"
    if any(k in name for k in SOFTMAX):
        return "softmax / log-softmax / CE"
    return "other tensor ops"


def _buckets(prof, total_s: float) -> dict[str, float]:
    """Seconds per bucket: operators by self time; tokenisation and planning by their ranges' own Python time."""
    out = dict.fromkeys(["matmul", "attention kernel", "softmax / log-softmax / CE", "other tensor ops"], 0.0)
    annotated = dict.fromkeys(ANNOTATED.values(), 0.0)
    for e in prof.key_averages():
        if e.key in ANNOTATED:  # total minus the operators inside it (planning builds tensors)
            annotated[ANNOTATED[e.key]] += (e.cpu_time_total - _children_total(prof, e.key)) / 1e6
        elif e.key.startswith("aten::") or "::" in e.key:
            out[_bucket(e.key)] += e.self_cpu_time_total / 1e6
    out |= annotated
    out["Python and the rest"] = max(0.0, total_s - sum(out.values()))
    return out


def _children_total(prof, label: str) -> float:
    """Self time of the operators that ran inside the `label` ranges (microseconds)."""
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name == label]
    return sum(
        e.self_cpu_time_total
        for e in events
        if e.name != label
        and "::" in e.name
        and any(s <= e.time_range.start and e.time_range.end <= t for s, t in ranges)
    )


def _matmul_flops(prompts, work, lm, shape: ModelShape) -> float:
    """Useful FLOPs of the linear layers and the LM head alone (attention's products run in its fused kernel)."""
    return pair_lengths(lm, prompts, work.train).scorer_flops(replace(shape, layers=0))


def _top(prof, n: int) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
    return [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in rows]


def _table(r: dict) -> str:
    lines = [
        f"{r['date']}, {r['threads']} thread(s), {r['dtype']}, load average {r['load_average_start']:.1f}"
        f" -> {r['load_average_end']:.1f}",
        f"matmul peak per CPU-second: bf16 {r['peak_gflops_per_cpu_s']['bfloat16']:.1f} GFLOP, "
        f"fp32 {r['peak_gflops_per_cpu_s']['float32']:.1f} GFLOP",
    ]
    names = list(next(iter(r["workloads"].values()))["shares"])
    head = "share of profiled time"
    lines.append(f"{head:<30}" + "".join(f"{w:>12}" for w in r["workloads"]))
    for k in names:
        lines.append(f"{k:<30}" + "".join(f"{x['shares'][k]:>12.1%}" for x in r["workloads"].values()))
    for key, label in (("fraction_of_peak", "fraction of peak (unprofiled)"),):
        lines.append(f"{label:<30}" + "".join(f"{x[key]:>12.2f}" for x in r["workloads"].values()))
    label = "matmuls alone, of peak"
    lines.append(f"{label:<30}" + "".join(f"{x['matmul_fraction_of_peak']:>12.2f}" for x in r["workloads"].values()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
