"""How many of a run's rewrite replies become candidates: the share kept, estimated with its uncertainty from the
calibration's replies, and the count of candidates it implies.

Each reply is kept or dropped (it failed to parse, repeated a prompt, ran too long, ...). The share kept, p, is a
property of the rewriter on this task's request form, unknown before it has replied. A uniform prior Beta(1, 1)
updated by the calibration's replies (r replies, k kept) gives the posterior Beta(1 + k, 1 + r - k): its mean is
the expected share, (k + 1) / (r + 2). The number of the run's S = T x hard_k x n_variants replies that are kept
is then beta-binomial: its mean is S times that share, its spread holds both the unknown p (which only more
calibration replies narrow) and the sampling of S replies. No count exceeds S, so the plan's maximum (every reply
kept) stays an upper bound on the expected figure and its range.

Not modelled, and why the range is wider than it looks: replies of one request share an example and a seed stream,
so they vary together more than independent draws would; later iterations also drop repeats of earlier ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Uniform: the calibration's replies are the only evidence of the rewriter's keep rate on this task.
PRIOR_KEPT, PRIOR_DROPPED = 1.0, 1.0
# The range's half-width in standard deviations: 1.28, about 80% of a normal distribution.
RANGE_Z = 1.28


@dataclass(frozen=True)
class Count:
    """An expected count with the range it most likely falls in (about 80%)."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class KeepRate:
    """The share of rewrite replies kept as candidates: Beta posterior from `kept` of `replies` observed."""

    kept: int
    replies: int

    def __post_init__(self) -> None:
        if not 0 <= self.kept <= self.replies:
            raise ValueError(f"kept {self.kept} of {self.replies} replies")

    @property
    def alpha(self) -> float:
        """The posterior's kept pseudo-count."""
        return PRIOR_KEPT + self.kept

    @property
    def beta(self) -> float:
        """The posterior's dropped pseudo-count."""
        return PRIOR_DROPPED + self.replies - self.kept

    @property
    def mean(self) -> float:
        """The expected share kept."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def sd(self) -> float:
        """The posterior standard deviation of the share: what the calibration leaves unknown."""
        a, b = self.alpha, self.beta
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))

    def candidates(self, slots: int) -> Count:
        """Kept replies out of `slots` (beta-binomial): the mean and its range, clipped to [0, slots]."""
        a, b, m = self.alpha, self.beta, self.mean
        variance = slots * m * (1 - m) * (a + b + slots) / (a + b + 1)
        half = RANGE_Z * math.sqrt(variance)
        mean = slots * m
        return Count(mean=mean, low=max(mean - half, 0.0), high=min(mean + half, float(slots)))
