"""The promotion gate: promote only when the paired interval of the held-out loss change clears the margin and
accuracy's interval allows no drop beyond the setting."""

from dataclasses import replace

import numpy as np
import pytest

from pmpo.errors import PmpoError
from pmpo.evaluation.gate import judge
from pmpo.evaluation.heldout import Evaluation


def _evaluation(losses, correct=None, correct_norm=None) -> Evaluation:
    losses = [float(x) for x in losses]
    return Evaluation(
        prompt="p",
        n_examples=len(losses),
        loss=float(np.mean(losses)),
        loss_per_token=float(np.mean(losses)) / 3,
        accuracy=None if correct is None else float(np.mean(correct)),
        option_accuracy=None,
        option_accuracy_norm=None if correct_norm is None else float(np.mean(correct_norm)),
        example_losses=tuple(losses),
        example_correct=None if correct is None else tuple(bool(c) for c in correct),
        example_option_correct_norm=None if correct_norm is None else tuple(bool(c) for c in correct_norm),
    )


RNG = np.random.default_rng(0)
BEFORE = RNG.gamma(4.0, 1.0, 60) + 1.0  # per-example held-out losses of production


def test_a_clear_gain_is_promoted():
    after = BEFORE * 0.9  # 10% lower on every example
    v = judge(_evaluation(BEFORE), _evaluation(after), margin=0.01, max_accuracy_drop=0.1)
    assert v.promote and v.why == "promoted"
    assert v.loss.estimate == pytest.approx(-0.1) and v.loss.high < -0.01
    assert v.accuracy is None and "better" in v.reason and "95% interval" in v.reason


def test_a_mean_gain_whose_interval_crosses_the_margin_is_refused():
    # Mean 3% lower, but on half the examples it is worse: the interval reaches above -1%.
    after = BEFORE * np.where(np.arange(60) % 2 == 0, 0.7, 1.24)
    v = judge(_evaluation(BEFORE), _evaluation(after), margin=0.01, max_accuracy_drop=None)
    assert v.loss.estimate < -0.01 <= v.loss.high  # the premise: the point estimate alone would promote
    assert not v.promote and v.why == "loss_interval_crosses_margin"
    assert "crosses -1.0%" in v.reason


def test_no_gain_is_refused_as_such():
    v = judge(_evaluation(BEFORE), _evaluation(BEFORE * 1.05), margin=0.01, max_accuracy_drop=None)
    assert not v.promote and v.why == "no_loss_gain" and v.reason.startswith("not better:")


def test_an_accuracy_drop_is_refused_even_with_a_clear_loss_gain():
    before_right = [True] * 40 + [False] * 20
    after_right = [False] * 8 + [True] * 32 + [False] * 20  # 8 of 60 answers lost, none gained
    v = judge(
        _evaluation(BEFORE, before_right), _evaluation(BEFORE * 0.8, after_right), margin=0.01, max_accuracy_drop=0.1
    )
    assert v.loss.high < -0.01  # the loss alone would promote
    assert v.accuracy is not None and v.accuracy.low < -0.1
    assert not v.promote and v.why == "accuracy_drop" and v.accuracy_name == "accuracy"
    # The guard off: the same candidate is promoted.
    off = judge(
        _evaluation(BEFORE, before_right), _evaluation(BEFORE * 0.8, after_right), margin=0.01, max_accuracy_drop=None
    )
    assert off.promote


def test_a_few_flips_each_way_pass_the_accuracy_guard():
    before_right = [True, False] * 30
    after_right = [False, True] * 2 + [True, False] * 28  # 2 lost, 2 gained
    v = judge(
        _evaluation(BEFORE, before_right), _evaluation(BEFORE * 0.9, after_right), margin=0.01, max_accuracy_drop=0.1
    )
    assert v.promote and v.accuracy.estimate == 0.0 and v.accuracy.low < 0 <= v.accuracy.low + 0.1


def test_multiple_choice_is_guarded_by_acc_norm_not_generated_answers():
    right = [True] * 60
    lost = [False] * 12 + [True] * 48
    # acc_norm drops, generated answers do not: the gate reads acc_norm.
    v = judge(
        _evaluation(BEFORE, right, right), _evaluation(BEFORE * 0.8, right, lost), margin=0.01, max_accuracy_drop=0.1
    )
    assert v.accuracy_name == "acc_norm" and v.why == "accuracy_drop"


def test_the_same_seed_gives_the_same_verdict_and_unequal_sets_are_refused():
    after = BEFORE * 0.97 + RNG.normal(0, 0.2, 60)
    a = judge(_evaluation(BEFORE), _evaluation(after), margin=0.01, max_accuracy_drop=None, seed=7)
    assert a == judge(_evaluation(BEFORE), _evaluation(after), margin=0.01, max_accuracy_drop=None, seed=7)
    with pytest.raises(PmpoError, match="same examples"):
        judge(_evaluation(BEFORE), _evaluation(BEFORE[:10]), margin=0.01, max_accuracy_drop=None)


def _softened(losses, tempered) -> Evaluation:
    return replace(_evaluation(losses), example_tempered_losses=tuple(float(x) for x in tempered))


def test_a_gain_that_is_only_a_less_sure_model_is_refused():
    # Pairs ranked wrong: the candidate's margins shrank towards 0, so each pair's loss fell towards ln 2; at each
    # prompt's best softening both sit at about ln 2 and nothing is gained.
    before, after = np.full(60, 1.3) + RNG.normal(0, 0.05, 60), np.full(60, 0.75) + RNG.normal(0, 0.05, 60)
    flat = np.log(2) + RNG.normal(0, 0.01, 60)
    v = judge(_softened(before, flat), _softened(after, flat), margin=0.01, max_accuracy_drop=None)
    assert v.loss.high < -0.01  # the plain loss clears the margin
    assert not v.promote and v.why == "only_less_sure" and v.tempered.high >= -0.01
    # a better ranking keeps its gain at the best softening: promoted
    v = judge(_softened(before, flat), _softened(after, flat * 0.8), margin=0.01, max_accuracy_drop=None)
    assert v.promote and v.tempered.high < -0.01


def test_without_softened_losses_the_gate_is_the_loss_and_accuracy_rule():
    after = BEFORE * 0.8
    assert judge(_evaluation(BEFORE), _evaluation(after), margin=0.01, max_accuracy_drop=None).tempered is None
    # recorded but the same as the losses (nothing softened): the loss's own test, not a second one
    same = judge(_softened(BEFORE, BEFORE), _softened(after, after), margin=0.01, max_accuracy_drop=None)
    assert same.promote and same.tempered is None
