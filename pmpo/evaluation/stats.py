"""Uncertainty of a held-out difference: a paired bootstrap interval of the mean of (after - before).

The two prompts are scored on the same examples, and an example that is hard under one prompt is hard under
the other, so examples are resampled in pairs: the interval then reflects the spread of the per-example
difference, which is much narrower than that of either prompt's own numbers.

`relative=True` gives the change as a fraction of the mean before (each resample divides by its own mean before),
for a rule whose margin is relative: one setting fits tasks whose summed losses differ in scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pmpo.errors import PmpoError


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    relative: bool = False,
) -> Interval:
    """Mean of (after - before) and its percentile bootstrap interval, resampling examples in pairs.

    `relative`: the mean change divided by the mean before, in every resample (a ratio of means, not a mean of
    per-example ratios: one example near zero loss would otherwise dominate).
    """
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise PmpoError(f"paired_bootstrap needs two equally long, non-empty lists, not {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise PmpoError(f"paired_bootstrap confidence must be between 0 and 1, not {confidence}")
    if n_resamples < 1:
        raise PmpoError(f"paired_bootstrap n_resamples must be at least 1, not {n_resamples}")
    if relative and (np.any(a < 0) or a.mean() <= 0):
        raise PmpoError(
            "paired_bootstrap relative=True needs values before that are >= 0 with a positive mean (a loss)"
        )
    diff = b - a  # [N]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diff.size, size=(n_resamples, diff.size))  # [R, N] example indices, with replacement
    means = diff[picks].mean(axis=1)  # [R]
    estimate = float(diff.mean())
    if relative:
        # A resample of only zero-loss examples has no scale: its change counts as infinitely large, not as nan.
        means = means / np.maximum(a[picks].mean(axis=1), np.finfo(np.float64).tiny)
        estimate = estimate / float(a.mean())
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    # Percentiles of identical resample means can differ from the mean by rounding: keep the estimate inside.
    return Interval(estimate=estimate, low=min(float(low), estimate), high=max(float(high), estimate))
