"""The paper's data split: a small training set to optimise on, the rest held out to measure the result."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmpo.data.examples import Dataset
from pmpo.errors import DataError


@dataclass(frozen=True)
class Split:
    """Training examples (scored every iteration) and held-out examples (scored once at the end)."""

    train: Dataset
    test: Dataset


def train_size(n: int, train_fraction: float = 0.2, train_cap: int | None = 50) -> int:
    """How many of `n` examples go to training: the fraction (rounded), capped, at least 1, leaving 1 to test."""
    if not 0.0 < train_fraction <= 1.0:
        raise DataError(f"train_fraction must be in (0, 1], not {train_fraction}")
    if train_cap is not None and train_cap < 1:
        raise DataError(f"train_cap must be at least 1 (or None for no cap), not {train_cap}")
    size = round(train_fraction * n)
    if train_cap is not None:
        size = min(size, train_cap)
    size = max(size, 1)
    return min(size, n - 1) if n > 1 else size


def split_dataset(dataset: Dataset, *, seed: int, train_fraction: float = 0.2, train_cap: int | None = 50) -> Split:
    """Seeded split: 20% of the data capped at 50 for training (the paper's rule), the rest for testing."""
    n = len(dataset)
    if n < 2:
        raise DataError(
            f"dataset {dataset.name!r} has {n} example: at least 2 are needed, one to optimise on and one to hold out"
        )
    size = train_size(n, train_fraction, train_cap)
    order = np.random.default_rng(seed).permutation(n)
    # Sorted, so each part keeps the file's order: easier to read back, and the same for the same seed.
    train = sorted(int(i) for i in order[:size])
    test = sorted(int(i) for i in order[size:])
    return Split(
        train=dataset.subset(train, name=f"{dataset.name}/train"),
        test=dataset.subset(test, name=f"{dataset.name}/test"),
    )
