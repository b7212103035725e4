"""Racing: score candidates on a growing slice of the training set and stop scoring the clearly worse ones.

Selection only needs the best candidate's full-set loss. Every candidate is scored on a first slice of the
examples; one whose loss is worse than the slice's leader (the incumbent included) by a safe margin is
dropped; the rest go on to a slice `growth` times longer (successive halving), until the survivors have
been scored on every example. The comparison is paired, example by example, because per-example losses of
different prompts move together (a hard example is hard under every prompt): the margin is a number of
standard errors of the per-example difference, so it adapts to the task's loss scale and noise.

Slices are drawn in a seeded random order (run seed and iteration), not the file's: a file sorted by label
would otherwise put one label only in the first slice and judge candidates on it. The full set is always
scored in the dataset's order, so a survivor's loss and per-example row are those it gets without racing.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from pmpo.data.examples import Example
from pmpo.errors import PmpoError
from pmpo.scoring.loss import BaseScorer, LossMatrix
from pmpo.scoring.settings import RacingSettings  # noqa: F401 (its home; re-exported where callers look for it)

# losses(candidates, n) -> [len(candidates), n]: per-example losses of those candidates on the first n examples
SliceLosses = Callable[[Sequence[int], int], np.ndarray]
# score(prompts, indices) -> LossMatrix [len(prompts), len(indices)]: those prompts on those examples, in that order
SliceScore = Callable[[list[str], list[int]], LossMatrix]


def race(
    scorer: BaseScorer,
    prompts: Sequence[str],
    examples: Sequence[Example],
    settings: RacingSettings = RacingSettings(),
    incumbent: str | None = None,
    order: Sequence[int] | None = None,
) -> list[float | None]:
    """Full-set mean loss of each prompt that survives the race, None for those dropped early.

    `incumbent`, when given, takes part as a reference (never dropped, not in the result); `order`: the
    order slices are drawn in (`slice_order`), the dataset's when None.
    """
    reference = scorer.loss_matrix([incumbent], examples).loss[0] if incumbent is not None else None
    rows = race_prompts(
        lambda ps, idx: scorer.loss_matrix(ps, [examples[i] for i in idx]),
        prompts,
        len(examples),
        settings,
        reference,
        order=order,
    )
    return [float(r.prompt_loss()[0]) if r.loss.shape[1] == len(examples) else None for r in rows]


def slice_order(n_examples: int, seed: int, iteration: int) -> list[int]:
    """A permutation of the examples, the same for the same run seed and iteration, to draw slices from."""
    return np.random.default_rng([seed, iteration]).permutation(n_examples).tolist()


def race_prompts(
    score: SliceScore,
    prompts: Sequence[str],
    n_examples: int,
    settings: RacingSettings,
    reference: np.ndarray | None = None,
    order: Sequence[int] | None = None,
) -> list[LossMatrix]:
    """Each prompt's one-row loss matrix on the examples it was scored on: all of them when it survived.

    A slice of n examples is the first n of `order` (the dataset's order when None), passed to
    `score(prompts, indices)` sorted, so the full set comes back in the dataset's order. `reference` holds
    the per-example losses, in the dataset's order, of a prompt already scored on every example (the
    optimizer's incumbent), which races but is never dropped.
    """
    order = list(range(n_examples)) if order is None else list(order)
    if sorted(order) != list(range(n_examples)):
        raise PmpoError(f"racing order must be a permutation of the {n_examples} examples")
    last: dict[int, LossMatrix] = {}
    n_prompts = len(prompts)

    def losses(candidates: Sequence[int], n: int) -> np.ndarray:
        indices = sorted(order[:n])
        mine = [c for c in candidates if c < n_prompts]  # the reference, if racing, is the last index
        table = np.empty((0, n))
        if mine:
            matrix = score([prompts[c] for c in mine], indices)
            last.update((c, matrix.row(r)) for r, c in enumerate(mine))
            table = matrix.loss
        if len(mine) < len(candidates):
            table = np.vstack([table, reference[None, indices]])
        return table

    with_reference = reference is not None
    keep = n_prompts if with_reference else None
    race_losses(losses, n_prompts + with_reference, n_examples, settings, always_keep=keep)
    return [last[c] for c in range(n_prompts)]


def race_losses(
    losses: SliceLosses,
    n_candidates: int,
    n_examples: int,
    settings: RacingSettings = RacingSettings(),
    always_keep: int | None = None,
) -> list[float | None]:
    """The race over any source of per-example losses (the scorer, or a precomputed matrix in benchmarks)."""
    alive = list(range(n_candidates))
    n = n_examples if not settings.enabled else min(n_examples, settings.first_slice)
    while True:
        slice_losses = losses(alive, n)  # [len(alive), n]
        if n >= n_examples:
            full = dict(zip(alive, _row_means(slice_losses).tolist()))
            return [full.get(c) for c in range(n_candidates)]
        alive = [c for c, keep in zip(alive, _survivors(slice_losses, settings.margin)) if keep or c == always_keep]
        n = min(n_examples, max(n + 1, math.ceil(n * settings.growth)))


def paired_gap(rows: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of each row's per-example difference to `reference` (rows - reference, paired).

    Racing drops by it, selection gates by it (pmpo.loop.selection) and the masking analysis proposes removals
    by it: one arithmetic for "lower by more than the noise". Fewer than 2 examples have no spread to measure:
    the standard error is 0 there, so the mean alone decides.
    """
    diff = np.atleast_2d(np.asarray(rows, dtype=np.float64)) - np.asarray(reference, dtype=np.float64)
    if np.isnan(diff).any():  # examples a prompt shows as demonstrations: each row pairs on the examples both scored
        return _paired_on_shared(diff)
    n = diff.shape[1]
    if n < 2:
        return diff.mean(axis=1), np.zeros(len(diff))
    return diff.mean(axis=1), diff.std(axis=1, ddof=1) / math.sqrt(n)


def _paired_on_shared(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`paired_gap` row by row over the non-NaN differences only."""
    means, errors = np.zeros(len(diff)), np.zeros(len(diff))
    for r, row in enumerate(diff):
        kept = row[~np.isnan(row)]
        means[r] = kept.mean() if len(kept) else np.nan
        errors[r] = kept.std(ddof=1) / math.sqrt(len(kept)) if len(kept) >= 2 else 0.0
    return means, errors


def _survivors(slice_losses: np.ndarray, margin: float) -> list[bool]:
    """Which rows are not worse than the best row by more than `margin` standard errors (paired)."""
    leader = int(np.argmin(_row_means(slice_losses)))
    if slice_losses.shape[1] < 2:  # no spread to judge by: keep everyone
        return [True] * len(slice_losses)
    mean, std_error = paired_gap(slice_losses, slice_losses[leader])  # per-example difference to the leader
    # A difference with no spread at all (std 0) is decisive: keep only if not worse.
    keep = mean <= np.where(std_error > 0, margin * np.where(std_error > 0, std_error, 1.0), 0.0)
    keep[leader] = True  # whatever the margin, the leader goes on
    return keep.tolist()


def _row_means(losses: np.ndarray) -> np.ndarray:
    """Each row's mean over its scored examples (NaN: an example the prompt shows as a demonstration)."""
    return np.array([row[~np.isnan(row)].mean() if not np.isnan(row).all() else np.inf for row in losses])
