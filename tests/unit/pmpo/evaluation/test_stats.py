"""Paired bootstrap intervals of a held-out difference."""

import numpy as np
import pytest

from pmpo.errors import PmpoError
from pmpo.evaluation.stats import Interval, paired_bootstrap


def test_interval_covers_a_known_shift_and_excludes_zero():
    rng = np.random.default_rng(1)
    difficulty = rng.gamma(2.0, 2.0, 200)  # shared by both prompts: the pairing is what makes the interval narrow
    before = difficulty + rng.normal(0, 0.3, 200)
    noise = rng.normal(0, 0.4, 200)
    after = before - 0.5 + (noise - noise.mean())  # the sample's mean shift is exactly -0.5
    interval = paired_bootstrap(before, after, seed=3)
    assert interval.low < -0.5 < interval.high
    assert interval.high < 0  # the improvement is resolved
    assert interval.estimate == pytest.approx(float(np.mean(after - before)))
    assert interval.high - interval.low < 0.3  # far narrower than the spread of either list (std ~2.8)


def test_coverage_is_near_the_confidence_level():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        before = rng.normal(0, 1, 60)
        after = before + 0.2 + rng.normal(0, 1, 60)
        interval = paired_bootstrap(before, after, n_resamples=500, seed=trial)
        covered += interval.low <= 0.2 <= interval.high
    assert 0.88 <= covered / 200 <= 0.99


def test_identical_inputs_give_a_zero_width_interval():
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert paired_bootstrap(values, values) == Interval(0.0, 0.0, 0.0)
    shifted = paired_bootstrap([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert shifted.estimate == pytest.approx(0.5) and shifted.high - shifted.low == pytest.approx(0.0)


def test_same_seed_same_interval_and_bad_input_says_why():
    before, after = [0, 1, 0, 1, 1, 0], [1, 1, 0, 1, 1, 1]
    assert paired_bootstrap(before, after, seed=5) == paired_bootstrap(before, after, seed=5)
    with pytest.raises(PmpoError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(PmpoError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=95)


def test_relative_change_is_the_change_over_the_mean_before():
    rng = np.random.default_rng(2)
    before = rng.gamma(4.0, 1.0, 100)
    after = before * 0.9 + rng.normal(0, 0.05, 100)
    absolute = paired_bootstrap(before, after, seed=1)
    relative = paired_bootstrap(before, after, seed=1, relative=True)
    assert relative.estimate == pytest.approx(absolute.estimate / before.mean())
    assert relative.low < -0.1 + 0.02 and -0.1 - 0.02 < relative.high < 0  # about 10% lower, resolved
    with pytest.raises(PmpoError, match="positive mean"):
        paired_bootstrap([0.0, -1.0], [1.0, 1.0], relative=True)
