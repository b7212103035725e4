"""The loss benchmark's targets (from issue 5) and its printed table."""

from __future__ import annotations

TARGETS = {
    "speedup_few_shot": 10.0,
    "speedup_zero_shot": 4.0,
    "fraction_of_peak": 0.6,
    "selection_cost_ratio": 20.0,
}
MAX_RSS_GIB = 2.0


def table(r: dict) -> str:
    """The report as aligned `name  value` lines."""
    rows = _setup(r) + [("", "")]
    for name, key in (("zero-shot", "zero_shot"), ("few-shot", "few_shot")):
        rows += _workload(name, r[key])
    rows += [("", "")] + _selection(r["selection"]) + _racing(r["racing"])
    rows += [("peak memory", f"{r['peak_rss_gib']:.2f} GiB RSS high-water"), ("", "")]
    for key, target in TARGETS.items():
        rows.append((key, f"{r[key]:.2f} (target >= {target}): {_met(r, key)}"))
    rows.append(("peak_rss_gib", f"{r['peak_rss_gib']:.2f} (target < {MAX_RSS_GIB}): {_met(r, 'peak_rss_gib')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" if k else "" for k, v in rows)


def _met(r: dict, key: str) -> str:
    return "met" if r["targets_met"][key] else "NOT met"


def _setup(r: dict) -> list[tuple[str, str]]:
    m, w, peak = r["machine"], r["workload"], r["peak_gflops"]
    f32, b16 = peak["float32"], peak["bfloat16"]
    return [
        (
            "machine",
            f"{m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads, "
            f"load avg at start {m['load_average_start']:.1f}",
        ),
        ("workload", f"{w['candidates']} candidates x {w['examples']} examples of {w['source']}"),
        ("variants", f"{w['variants']} (rewrites took {w['rewrite_seconds']:.0f} s, not timed below)"),
        (
            "matmul peak",
            f"fp32 {f32['wall']:.1f} GFLOP/s ({f32['cpu']:.1f} per CPU-s), "
            f"bf16 {b16['wall']:.1f} GFLOP/s ({b16['cpu']:.1f} per CPU-s)",
        ),
        ("scorer dtype", r["scorer_dtype"] + " (ModelSettings dtype=auto)"),
    ]


def _workload(name: str, x: dict) -> list[tuple[str, str]]:
    return [
        (
            f"{name} prompt",
            f"{x['prefix_tokens_mean']:.0f} prefix tokens (mean), {x['workload_tokens']} workload tokens",
        ),
        (
            f"{name} naive",
            f"{x['naive_tokens_per_s']:.0f} tok/s (measured on {x['naive_pairs_measured']} pairs, "
            f"{x['naive_seconds']:.0f} s; {x['naive_gflops']:.1f} GFLOP/s)",
        ),
        (
            f"{name} scorer",
            f"{x['scorer_tokens_per_s']:.0f} tok/s ({x['scorer_seconds']:.0f} s wall, "
            f"{x['scorer_cpu_seconds']:.0f} s CPU; {x['tokens_computed']} tokens computed; "
            f"{x['scorer_gflops']:.1f} GFLOP/s)",
        ),
        (f"{name} speedup", f"{x['speedup']:.1f}x wall ({x['speedup_cpu_time']:.1f}x per CPU-second)"),
        (
            f"{name} fraction of peak",
            f"{x['fraction_of_peak']:.2f} of the best matmul peak per CPU-second "
            f"({x['fraction_of_peak_wall']:.2f} by wall time; "
            f"{x['fraction_of_bf16_peak']:.1f}x the bf16 peak)",
        ),
    ]


def _selection(sel: dict) -> list[tuple[str, str]]:
    ties = ", ties the best accuracy" if sel.get("loss_pick_ties_best_accuracy") and not sel["same_pick"] else ""
    return [
        (
            "selection by loss",
            f"candidate {sel['by_loss']} in {sel['loss_seconds']:.0f} s "
            f"(accuracy {sel['accuracy_of_loss_pick']:.2f}{ties})",
        ),
        (
            "selection by generation",
            f"candidate {sel['by_accuracy']} in {sel['generation_seconds']:.0f} s "
            f"(greedy, <= {sel['max_new_tokens']} new tokens, answer contained; "
            f"accuracy {max(sel['accuracy']):.2f}, "
            f"exact-match best {max(sel['accuracy_exact']):.2f})",
        ),
        ("same pick", str(sel["same_pick"])),
    ]


def _racing(rc: dict) -> list[tuple[str, str]]:
    rows = [
        (
            "racing (real, zero-shot)",
            f"{rc['seconds']:.0f} s, speedup {rc['speedup']:.1f}x, "
            f"dropped {rc['dropped']}, same pick {rc['same_pick']}",
        )
    ]
    for key, v in rc["simulated"].items():
        outcome = f"same pick {v['same_pick']:.3f}, pairs scored {v['pairs_scored']:.2f}"
        rows.append((f"racing simulated {key}", outcome))
    return rows
