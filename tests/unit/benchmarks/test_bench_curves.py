"""The cost curves' fits and plots, and the profiler's buckets (no model: synthetic points)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import bench_curves as bc  # noqa: E402
import profile_scorer as ps  # noqa: E402


def _pt(tokens_scored: int, cpu: float, generated: int = 0, prefilled: int = 0) -> dict:
    return {
        "wall_s": 3 * cpu,
        "cpu_s": cpu,
        "tokens_scored": tokens_scored,
        "tokens_generated": generated,
        "tokens_prefilled": prefilled,
    }


def _curves() -> dict:
    """Points that follow cpu = 0.2 + 0.002 * tokens scored exactly; no reuse grows with the prompt."""
    s = lambda t: _pt(t, 0.2 + 0.002 * t)  # noqa: E731
    return {
        "prompt_length": [
            {"prefix_tokens": p, "examples": 10, "reuse": s(500 + p), "no_reuse": s(500 + 10 * p)} for p in (20, 500)
        ],
        "examples": [{"examples": n, "zero_shot": s(50 * n), "few_shot": s(500 + 50 * n)} for n in (5, 10)],
        "candidates": [
            {"candidates": c, "examples": 10, "zero_shot": s(500 * c), "few_shot": s(1000 * c)} for c in (1, 2)
        ],
        "greedy": [
            {"contexts": n, "max_new_tokens": g, **_pt(0, 0.1 + 0.01 * n * g, n * g, 70 * n)}
            for n, g in ((4, 16), (8, 4), (8, 32))
        ],
        "rewrite": [{"n_variants": n, **_pt(0, 1.0 + 0.05 * 60 * n, 60 * n, 300 * n)} for n in (1, 2, 4)],
    }


def test_fit_recovers_a_line():
    fit = bc._fit([1, 2, 3, 4], [3.0, 5.0, 7.0, 9.0])
    assert fit["a"] == pytest.approx(1.0) and fit["b"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0)


def test_fits_give_one_line_per_step():
    fits = bc._fits(_curves())
    assert fits["scoring"]["a"] == pytest.approx(0.2) and fits["scoring"]["b"] == pytest.approx(0.002)
    assert fits["masking_analysis"]["same_as"] == fits["candidate_scoring"]["same_as"] == "scoring"
    gen = fits["heldout_evaluation"]["generation"]
    assert (gen["a"], gen["b"]) == pytest.approx((0.1, 0.01))
    assert fits["rewrite_proposal"]["b"] == pytest.approx(0.05)
    # prefix reuse: 0.002 s per prompt token; without it every example pays it again
    assert fits["prompt_length"]["reuse"]["b"] == pytest.approx(0.002)
    assert fits["prompt_length"]["no_reuse"]["b"] == pytest.approx(0.02)


def test_plots_are_written(tmp_path):
    report = {
        "machine": {"date": "2026-12-06", "torch_threads": 1},
        "curves": _curves(),
        "nightly": [{"prompts": n, "workers": w, "wall_s": 10.0 * n / w} for n in (4, 8) for w in (1, 2)],
    }
    bc._plots(report, tmp_path)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {f"cost_{k}.png" for k in ("prompt_length", "examples", "candidates", "generation", "nightly")}
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "op, bucket",
    [
        ("aten::mm", "matmul"),
        ("aten::addmm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention kernel"),
        ("aten::_log_softmax", "softmax / log-softmax / CE"),
        ("aten::nll_loss_forward", "softmax / log-softmax / CE"),
        ("aten::mul", "other tensor ops"),
    ],
)
def test_profile_buckets(op, bucket):
    assert ps._bucket(op) == bucket
