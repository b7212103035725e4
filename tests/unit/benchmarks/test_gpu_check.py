"""The prepared GPU check runs on CPU at its small size and its numbers agree (parity, prefix, bf16 ranking).

The run takes ~15-25 s on 2 busy cores (tokenizer, matmul peaks, 5 scorings of 2 workloads), so its tests are slow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    gpu_check.main(["--device", "cpu", "--small", "--threads", "1", "--json", str(out)])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_small_cpu_run_writes_one_json_with_every_check(report):
    assert report["machine"]["device"] == "cpu"
    assert list(report["sizes"]) == ["small"]
    assert report["workload"]["candidates"] == 13
    few = report["sizes"]["small"]["few_shot"]
    assert set(few["runs"]) == {"fp32", "fp32_expand", "fp32_shared", "fp32_no_reuse", "bf16"}
    for run in few["runs"].values():
        assert run["tokens_per_s"] > 0 and run["batches"] > 0 and run["rows_per_batch_max"] >= 1
        assert run["fraction_of_bf16_peak"] > 0
    # The 3-shot block is in every few-shot prompt: its shared prefix is far longer than the zero-shot one
    # (whichever task it runs on: a BIG-bench sample where ../shared has one, else the built-in sentiment task).
    zero = report["sizes"]["small"]["zero_shot"]
    assert few["prefix_tokens_mean"] > 3 * zero["prefix_tokens_mean"]


@pytest.mark.slow
def test_scorer_matches_the_reference_loop_and_prefix_reuse_changes_nothing(report):
    checks = report["checks"]
    assert checks["parity_ok"] and checks["parity_max_abs_nats"] <= gpu_check.PARITY_NATS
    assert checks["prefix_max_abs_nats"] <= gpu_check.PARITY_NATS
    for workload in ("zero_shot", "few_shot"):
        section = report["sizes"]["small"][workload]
        assert section["parity"]["pairs"] >= 6
        # Reuse computes the prompt once per candidate, not once per example.
        runs = section["runs"]
        assert runs["fp32"]["tokens_computed"] < runs["fp32_no_reuse"]["tokens_computed"]


@pytest.mark.slow
def test_bf16_ranks_the_candidates_as_fp32_does_up_to_its_error(report):
    for workload in ("zero_shot", "few_shot"):
        ranking = report["sizes"]["small"][workload]["bf16_ranking"]
        assert ranking["candidates"] == 13
        assert ranking["max_abs_loss_diff"] < 0.1  # nats per example: bf16 keeps ~3 significant digits
        # Swaps only between candidates closer than bf16's error: a clear best stays best.
        assert ranking["kendall_tau"] >= 0.5
        if ranking["fp32_best_gap"] > 2 * ranking["max_abs_loss_diff"]:
            assert ranking["same_best"]


def test_kendall_tau():
    assert gpu_check.kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == 1.0
    assert gpu_check.kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0
