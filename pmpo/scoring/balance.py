"""Label-balanced training loss: in a task with labels, each label weighs the same in the mean over examples.

40-50 training examples rarely hold the labels in the task's proportions (the BIG-bench navigate sample split 24
True to 19 False for training, 46 to 54 held out). A prompt that only tilts the model towards the training sample's
majority answer then lowers the plain mean loss, passes the gate, even raises training accuracy, and loses on held-out
data: the "shifted prior" of issue 19. With every label weighed equally a pure tilt gains on one label what it loses
on the other, so it no longer reads as a better prompt. It costs nothing: the same per-example losses, reweighted.

A label is the correct option's text where every example offers the same options (True/False, Yes/No), else the
correct option's position (the model's prior over positions is what a prompt can tilt there); the target of a
supervised task with few distinct targets (a classification task); none for free text and preference pairs.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from pmpo.data.examples import Example, MultipleChoice, Supervised

# Balance only where each label has this many training examples on average: with fewer, most labels are one or
# two examples (object_counting's 15 numbers among 50) and the weights would be noise, not a correction.
MIN_PER_LABEL = 5
# One example never counts for more than 3 (nor less than 1/3): a rare label's lone example must not decide
# which prompt wins.
MAX_WEIGHT = 3.0


def labels(examples: Sequence[Example]) -> list[str] | None:
    """Each example's label, or None when the examples are not a labelled task (or not all of one kind)."""
    if examples and all(isinstance(e, MultipleChoice) for e in examples):
        shared = len({frozenset(e.options) for e in examples}) == 1
        return [e.target if shared else f"option {e.options.index(e.target) + 1}" for e in examples]
    if examples and all(isinstance(e, Supervised) for e in examples):
        targets = [e.target for e in examples]
        return targets if len(set(targets)) * MIN_PER_LABEL <= len(targets) else None
    return None


def label_weights(examples: Sequence[Example]) -> np.ndarray | None:
    """[N] weights of mean 1 that give every label the same total weight (clipped to [1/3, 3]); None: no labels,
    or one label only (every weight would be 1)."""
    found = labels(examples)
    if found is None:
        return None
    counts = Counter(found)
    if len(counts) < 2:
        return None
    raw = np.array([len(found) / (len(counts) * counts[label]) for label in found])
    clipped = np.clip(raw, 1 / MAX_WEIGHT, MAX_WEIGHT)
    return clipped * len(clipped) / clipped.sum()
