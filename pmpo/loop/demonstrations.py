"""Demonstrations chosen by loss (beyond the paper): candidates that add k training examples to the incumbent as
demonstrations, scored on the training set like any candidate, so the selection gate decides whether they stay.

No forward pass picks them: the incumbent's per-example losses, already computed, rank the examples. A prompt that
shows an example is never scored on it (pmpo.scoring.loss leaves it out, by `pmpo.text.demonstrations.shown`), and
the gate pairs such a candidate with the incumbent on the examples both were scored on. The loop sees only the
training set, so a held-out example is never a demonstration.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from pmpo.data.examples import Dataset
from pmpo.errors import ContextLengthError
from pmpo.loop.settings import DemonstrationSettings
from pmpo.scoring.context_budget import check_fits
from pmpo.text.demonstrations import input_form, reference, shown, usable, with_demonstrations
from pmpo.text.template import prompt_variables

# A demonstration prompt too long for some training example under the model's context: not scored (the scorer
# would fail the run for one candidate's fault). The same reason as a rewrite's.
TOO_LONG_CONTEXT = "too_long_context"


def demonstration_sets(
    losses: Sequence[float], train: Dataset, k: int, sets: int, *, seed: int, iteration: int, form: str | None = None
) -> list[tuple[int, ...]]:
    """Up to `sets` distinct sets of k training indices, the same for the same seed and iteration.

    Drawn from the examples the incumbent already fits best (loss at most the median): their reference is what the
    model finds plausible, so they are typical of the task and likely labelled right, where a high-loss example is
    often odd or mislabelled (and is already the rewrites' hard example). Within a set, references take turns (the
    lowest-loss example of each, then the next of each): demonstrations that all show one label shift the model's
    prior toward it, the loss-only win issue 19 warns about. Set 0 takes each reference's lowest-loss examples; the
    others a seeded draw from the same pool. `form`: a template's variable part (examples that cannot fill it, or
    whose text reads as a variable, are not used).
    """
    row = np.asarray(losses, dtype=np.float64)
    eligible = [i for i in range(len(train)) if not math.isnan(row[i]) and usable(train.examples[i], form)]
    k = min(k, len(eligible), len(train) - 2)  # at least two examples left to score the candidate on
    if k <= 0:
        return []
    median = float(np.median(row[eligible]))
    pool = sorted((i for i in eligible if row[i] <= median), key=lambda i: (row[i], i))
    if len(pool) < k:
        pool = sorted(eligible, key=lambda i: (row[i], i))[: max(k, len(pool))]
    chosen: list[tuple[int, ...]] = []
    for s in range(sets):
        order = pool if s == 0 else np.random.default_rng([seed, iteration, s]).permutation(pool).tolist()
        picked = _taking_turns(order, train, k)
        if frozenset(picked) not in {frozenset(c) for c in chosen}:
            chosen.append(picked)
    return chosen


def _taking_turns(order: Sequence[int], train: Dataset, k: int) -> tuple[int, ...]:
    """k indices from `order`, one per reference in turn (references in order of their first example)."""
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(reference(train.examples[i]).strip().casefold(), []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < k:
        picked += [g[depth] for g in groups.values() if depth < len(g)][: k - len(picked)]
        depth += 1
    return tuple(picked)


def demonstration_prompts(
    text_side: Any,
    incumbent: str,
    train: Dataset,
    losses: Sequence[float],
    settings: DemonstrationSettings,
    iteration: int,
    seen: set[str] | frozenset[str],
    *,
    seed: int,
    chat_message: int | None = None,
    mc_objective: str = "preference",
) -> tuple[list[str], dict[str, int]]:
    """The incumbent with each demonstration set in its optimised text, and the sets not proposed, by reason.

    `losses`: the incumbent's per-example training losses; `text_side`: the scored model's tokenizer side (anything
    with tokenizer, placement and context_length), to check each prompt fits; None skips the check. A prompt that
    already shows demonstrations gets none added (one block a prompt; its rewrites keep or drop it)."""
    if settings.k <= 0:
        return [], {}
    if shown(incumbent, train.examples):
        return [], {}
    form = input_form(incumbent)
    sets = demonstration_sets(losses, train, settings.k, settings.sets, seed=seed, iteration=iteration, form=form)
    prompts, rejected = [], {TOO_LONG_CONTEXT: 0}
    required = prompt_variables(incumbent)
    for picked in sets:
        prompt = with_demonstrations(incumbent, [train.examples[i] for i in picked], chat_message)
        if prompt in seen or prompt in prompts or set(prompt_variables(prompt)) != set(required):
            continue
        if text_side is not None and not _fits(text_side, prompt, train, mc_objective):
            rejected[TOO_LONG_CONTEXT] += 1
            continue
        prompts.append(prompt)
    return prompts, {r: n for r, n in rejected.items() if n}


def _fits(text_side: Any, prompt: str, train: Dataset, mc_objective: str) -> bool:
    try:
        check_fits(text_side, prompt, train, mc_objective)
    except ContextLengthError:
        return False
    return True
