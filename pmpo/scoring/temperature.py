"""The tempered loss: each prompt's preference losses at the softening that suits that prompt best, so a prompt
gains only by ranking the answers better, not by making the model less sure of them.

-log sigmoid(m) of a pair falls towards ln 2 = 0.693 as its margin m shrinks to 0, whatever the margin's sign. Where
the model cannot do a task its margins are wrong about half the time, so a prompt that only makes it less sure (an
instruction about another subject) lowers the loss and can clear any gate on it. The quality benchmark's navigate and
logical_deduction picks did: training loss 0.835 -> 0.707 and 1.476 -> 1.385, tempered 0.693 -> 0.690 and
0.688 -> 0.687, held-out accuracy lost (issue 19, docs/benchmarks.md). Scoring each prompt at the t in [0, 1] that
minimises its own mean loss takes that gain away: the incumbent may be softened as much as the candidate, down to
indifference (t = 0, every pair ln 2). A prompt whose margins mostly point the right way keeps t = 1, its loss as
scored, so where the model ranks the answers nothing changes. No pass is added: the margins are the loss's own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# loss(t) is convex in t (a mean of softplus of linear functions of t): a grid of step 0.01 finds its minimum to
# within 0.01 of t, with no solver to configure and the same answer on every machine.
GRID = np.linspace(0.0, 1.0, 101)


def tempered(margins: Sequence[np.ndarray]) -> np.ndarray:
    """[N] each example's preference loss, mean over its pairs of -log sigmoid(t * m), at the t in [0, 1] that
    minimises their mean; `margins`: each example's beta * (s+ - s-), one per rejected output."""
    if not margins:
        return np.zeros(0)
    shape = (len(margins), max(len(m) for m in margins))
    padded, real = np.zeros(shape), np.zeros(shape, dtype=bool)  # examples differ in their number of pairs
    for i, m in enumerate(margins):
        padded[i, : len(m)], real[i, : len(m)] = m, True
    pairs = np.logaddexp(0.0, -GRID[:, None, None] * padded[None]) * real  # [T, N, pairs]
    per_t = pairs.sum(axis=2) / real.sum(axis=1)  # [T, N]
    return per_t[int(np.argmin(per_t.mean(axis=1)))]
