"""Which held-out examples judge a prompt: a seeded random draw from the test split, stratified by label.

The first N in file order would judge on whatever the file puts first: a file sorted by label gives a one-class
evaluation, on which a prompt that shifts the label prior looks like a gain. A stratified draw keeps each label's
share of the test split (to within one example), so accuracy on it estimates accuracy on the task.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pmpo.data.examples import Dataset, Example, MultipleChoice, Supervised
from pmpo.evaluation.matching import MAX_LABELS

# Its own stream of the run's seed: the draw does not repeat the split's permutation of the same seed.
_STREAM = 0x68656C64  # "held"


def stratum(example: Example, few_labels: bool) -> str | None:
    """The label an example is stratified by: the correct option, or the target of a task of few targets."""
    if isinstance(example, MultipleChoice):
        return example.target
    if isinstance(example, Supervised) and few_labels:
        return example.target
    return None


def heldout_draw(test: Dataset, n: int | None, *, seed: int) -> Dataset:
    """`n` examples of `test` (all when None or more), drawn at random with `seed`, each label in proportion.

    Multiple choice is stratified by the correct option's text; supervised tasks by the target when they have at
    most MAX_LABELS distinct targets; other tasks (preference pairs, free text) are drawn unstratified. The examples
    keep the file's order: the same seed gives the same examples in the same order.
    """
    if n is None or n >= len(test):
        return test
    targets = {e.target for e in test.examples if isinstance(e, Supervised)}
    few = len(targets) <= MAX_LABELS
    rng = np.random.default_rng([seed, _STREAM])
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, example in enumerate(test.examples):
        groups[stratum(example, few)].append(i)
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    quota = _largest_remainder([len(groups[k]) for k in keys], n, rng)
    chosen: list[int] = []
    for key, take in zip(keys, quota):
        members = groups[key]
        chosen += [members[int(j)] for j in rng.permutation(len(members))[:take]]
    return test.subset(sorted(chosen), name=test.name)


def _largest_remainder(sizes: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Integer shares of `n` proportional to `sizes` (Hamilton's method); ties in the remainders broken at random."""
    total = sum(sizes)
    exact = [n * s / total for s in sizes]
    quota = [int(x) for x in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quota[i]), rng.random()))
    for i in order[: n - sum(quota)]:
        quota[i] += 1
    return quota
