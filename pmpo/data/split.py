"""The paper's data split: a small training set to optimise on, the rest held out to measure the result.

An example's side is a property of the example: a seeded hash of its content, not its position. A file that grows
(new rows appended, or inserted anywhere) keeps every old example on the side it was on, so `pmpo evaluate`,
`pmpo compare --data` and the nightly refresh never score a run's training examples as held out. Identical
examples share a side, so a duplicate cannot leak either.

The cost: sizes follow the fraction on average, not exactly, and with the cap the examples of the training side
beyond it are in neither part (an example that was trained on is never held out later).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pmpo.data.examples import Dataset, example_key
from pmpo.errors import DataError

# The paper's rule: train on 20% of the data, at most 50 examples, and hold the rest out. The optimisation and
# evaluation configs take these types, so one run's training examples are never another's held-out ones by default.
TRAIN_FRACTION, TRAIN_CAP = 0.2, 50
TrainFraction = Annotated[float, Field(gt=0, le=1, description="share of the data to train on (the paper: 20%)")]
TrainCap = Annotated[int | None, Field(ge=1, description="most training examples (the paper: 50; none: no cap)")]


@dataclass(frozen=True)
class Split:
    """Training examples (scored every iteration) and held-out examples (scored once at the end)."""

    train: Dataset
    test: Dataset


def train_size(n: int, train_fraction: float = TRAIN_FRACTION, train_cap: int | None = TRAIN_CAP) -> int:
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


def draw(example_key_: str, seed: int) -> float:
    """An example's place in [0, 1) under `seed`: below the training fraction, it is on the training side."""
    digest = hashlib.sha256(f"pmpo-split:{seed}:{example_key_}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_dataset(
    dataset: Dataset, *, seed: int, train_fraction: float = TRAIN_FRACTION, train_cap: int | None = TRAIN_CAP
) -> Split:
    """Seeded split by content: about 20% of the data, capped at 50, for training (the paper's rule); the rest is
    held out. An example's side depends on its content and the seed only, never on the other rows."""
    n = len(dataset)
    if n < 2:
        raise DataError(
            f"dataset {dataset.name!r} has {n} example: at least 2 are needed, one to optimise on and one to hold out"
        )
    size = train_size(n, train_fraction, train_cap)  # also checks the settings
    places = [draw(example_key(e), seed) for e in dataset.examples]
    order = sorted(range(n), key=lambda i: (places[i], i))
    side = [i for i in order if places[i] < train_fraction]
    held = [i for i in order if places[i] >= train_fraction]
    # A set this small may put no example on one side: the nearest one crosses, so that both have one. (Only then
    # can a later, larger file move it back; a real dataset is never this small.)
    if not side:
        side, held = held[:1], held[1:]
    if not held:
        side, held = side[:-1], side[-1:]
    # Sorted, so each part keeps the file's order: easier to read back, and the same for the same seed.
    train = sorted(side[:size])
    test = sorted(held)
    return Split(
        train=dataset.subset(train, name=f"{dataset.name}/train"),
        test=dataset.subset(test, name=f"{dataset.name}/test"),
    )
