"""The expected-count model of kept rewrite replies: the Beta posterior's figures, the beta-binomial range against
its exact distribution, and the range's coverage when the keep rate is drawn from the prior."""

import math
import random

import pytest

from pmpo.loop.keep_rate import RANGE_Z, KeepRate


def _beta_binomial(slots: int, a: float, b: float) -> list[float]:
    """The exact beta-binomial probabilities of 0..slots kept."""

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return [math.comb(slots, j) * math.exp(log_beta(j + a, slots - j + b) - log_beta(a, b)) for j in range(slots + 1)]


def test_the_share_is_the_posterior_mean_and_narrows_with_evidence():
    assert KeepRate(kept=0, replies=0).mean == 0.5  # no evidence: the uniform prior's
    assert KeepRate(kept=3, replies=8).mean == pytest.approx(4 / 10)
    assert KeepRate(kept=8, replies=8).mean == pytest.approx(9 / 10)  # all kept is not taken for always
    assert KeepRate(kept=6, replies=16).sd < KeepRate(kept=3, replies=8).sd < KeepRate(kept=0, replies=0).sd


@pytest.mark.parametrize("kept,replies,slots", [(3, 8, 24), (8, 8, 12), (0, 4, 40), (5, 5, 1)])
def test_the_count_is_beta_binomial_and_within_the_slots(kept, replies, slots):
    keep = KeepRate(kept=kept, replies=replies)
    pmf = _beta_binomial(slots, keep.alpha, keep.beta)
    mean = sum(j * p for j, p in enumerate(pmf))
    sd = math.sqrt(sum((j - mean) ** 2 * p for j, p in enumerate(pmf)))
    count = keep.candidates(slots)
    assert count.mean == pytest.approx(mean)
    assert count.high - count.low <= 2 * RANGE_Z * sd + 1e-9  # clipping only narrows it
    assert 0 <= count.low <= count.mean <= count.high <= slots  # never past every reply kept (the maximum)
    if count.low > 0 and count.high < slots:
        assert count.high - count.mean == pytest.approx(RANGE_Z * sd)


def test_the_range_covers_about_four_runs_in_five_when_the_rate_is_as_uncertain_as_the_prior_says():
    rng, replies, slots, trials = random.Random(0), 8, 24, 4000
    inside = 0
    for _ in range(trials):
        p = rng.random()  # a rewriter's keep rate, drawn from the uniform prior
        kept = sum(rng.random() < p for _ in range(replies))
        actual = sum(rng.random() < p for _ in range(slots))
        count = KeepRate(kept=kept, replies=replies).candidates(slots)
        inside += count.low <= actual <= count.high
    assert 0.72 <= inside / trials <= 0.9


def test_impossible_evidence_is_refused():
    with pytest.raises(ValueError):
        KeepRate(kept=5, replies=4)
