"""The held-out change (final - initial) with its interval reaches MLflow metrics, the summary JSON and the
CLI's table, as the same numbers everywhere."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flows.record import heldout_metrics
from flows.summary import heldout_summary
from pmpo.evaluation.heldout import Evaluation, compare
from pmpo_cli import display


def _evaluation(losses, correct, option, option_norm) -> Evaluation:
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return Evaluation(
        prompt="p",
        n_examples=len(losses),
        loss=mean(losses),
        loss_per_token=0.5,
        accuracy=mean(correct),
        option_accuracy=mean(option),
        option_accuracy_norm=mean(option_norm),
        example_losses=tuple(losses),
        example_correct=tuple(correct),
        example_option_correct=tuple(option),
        example_option_correct_norm=tuple(option_norm),
    )


INITIAL = _evaluation([3.0, 2.5, 4.0, 3.0] * 4, [False, True, False, False] * 4, [True, False] * 8, [False, False] * 8)
FINAL = _evaluation([2.0, 2.0, 3.5, 2.5] * 4, [True, True, False, True] * 4, [True, True] * 8, [True, False] * 8)


def test_mlflow_metrics_carry_every_delta_and_its_interval():
    metrics = heldout_metrics(INITIAL, FINAL, seed=4)
    delta = compare(INITIAL, FINAL, seed=4)
    for name in ("loss", "accuracy", "option_accuracy", "option_accuracy_norm"):
        interval = getattr(delta, name)
        assert metrics[f"heldout/delta_{name}"] == pytest.approx(interval.estimate)
        assert metrics[f"heldout/delta_{name}_low"] == interval.low
        assert metrics[f"heldout/delta_{name}_high"] == interval.high
    assert metrics["heldout/delta_accuracy"] == pytest.approx(0.5)
    assert metrics["heldout/option_accuracy_norm_final"] == pytest.approx(0.5)
    no_generation = _evaluation([1.0, 2.0], [True, False], [True, True], [True, True])
    no_generation = Evaluation(**{**no_generation.__dict__, "accuracy": None, "example_correct": None})
    assert "heldout/delta_accuracy" not in heldout_metrics(no_generation, no_generation)


def test_summary_json_and_table_show_the_same_intervals():
    heldout = heldout_summary((INITIAL, FINAL), seed=4)
    dumped = json.loads(heldout.model_dump_json())
    delta = compare(INITIAL, FINAL, seed=4)
    assert dumped["delta_loss"] == pytest.approx(dataclasses.asdict(delta.loss))
    assert dumped["delta_option_accuracy_norm"]["estimate"] == pytest.approx(0.5)
    assert dumped["final_option_accuracy_norm"] == pytest.approx(0.5)
    rows = {label: change for label, _, _, change in display.heldout_rows(heldout)}
    loss_row = next(change for label, change in rows.items() if label.startswith("held-out loss"))
    assert loss_row == f"{delta.loss.estimate:+.4f} [{delta.loss.low:+.4f}, {delta.loss.high:+.4f}]"
    acc = delta.accuracy
    assert rows["held-out accuracy"] == f"{100 * acc.estimate:+.1f} pts [{100 * acc.low:+.1f}, {100 * acc.high:+.1f}]"
    assert set(rows) >= {"held-out option accuracy (acc)", "held-out option accuracy per byte (acc_norm)"}
