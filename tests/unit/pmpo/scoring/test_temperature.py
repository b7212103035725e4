"""The tempered loss: a prompt that only shrinks the margins gains nothing, a better ranking still shows, and where
the margins mostly point the right way it is the loss as scored."""

import math

import numpy as np
import pytest

from pmpo.scoring.loss import preference_loss
from pmpo.scoring.temperature import tempered

RNG = np.random.default_rng(0)
# A model at chance: margins of either sign, a little more often wrong than right (mean -0.2).
AT_CHANCE = [np.array([m]) for m in RNG.normal(-0.2, 1.0, size=50)]


def _plain(margins):
    return np.array([preference_loss(0.0, m) for m in margins])  # nll+ = 0, nll- = m: the margin is m


def test_a_prompt_that_only_makes_the_model_less_sure_gains_nothing():
    shrunk = [m / 2 for m in AT_CHANCE]
    assert _plain(shrunk).mean() < _plain(AT_CHANCE).mean() - 0.05  # the plain loss calls it better
    assert tempered(shrunk).mean() == pytest.approx(tempered(AT_CHANCE).mean())
    assert tempered(AT_CHANCE) == pytest.approx(np.full(50, math.log(2)))  # softened to indifference


def test_a_better_ranking_lowers_the_tempered_loss():
    better = [m + 1.0 for m in AT_CHANCE]
    assert tempered(better).mean() < tempered(AT_CHANCE).mean() - 0.05


def test_margins_that_point_the_right_way_keep_the_loss_as_scored():
    # Examples with 1 to 3 pairs (options differ in number); most margins positive.
    margins = [RNG.normal(2.0, 1.0, size=k) for k in RNG.integers(1, 4, size=40)]
    assert tempered(margins) == pytest.approx(_plain(margins))
    assert tempered([]).shape == (0,)


def test_the_tempered_mean_is_never_above_the_plain_one():
    for _ in range(20):
        margins = [RNG.normal(RNG.normal(0, 1), 2.0, size=k) for k in RNG.integers(1, 5, size=30)]
        assert tempered(margins).mean() <= _plain(margins).mean() + 1e-12
