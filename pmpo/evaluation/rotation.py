"""A fresh held-out draw for every promotion decision, and how often its examples have judged before.

A held-out set that judges every night's candidate becomes a selection set: each decision leaks a bit about those
examples into production, and after enough nights production fits them. Of the known remedies (Dwork et al. 2015's
Thresholdout, a counted budget of decisions per fixed set, a fresh draw per decision) we draw afresh: decision k about
a prompt is judged on a seeded, label-stratified draw (pmpo.evaluation.draw) from its whole test split, with a
seed derived from (the split's seed, the prompt's name, k). Why this one:

- it needs nothing but the data the refresh already has, and no new statistics to trust (Thresholdout adds noise
  to every answer and needs its own budget and threshold tuned);
- the decision is the same interval rule on the same kind of sample every night, so its error rate does not
  change with the night (a counted budget judges well until it is spent, then not at all);
- each example judges only about n/N of the decisions (draw n of a pool of N), so the leak per example is spread
  out; and an auditor reproduces the draw from its seed and the data.

What it cannot do is make a small pool large: with the draw as big as the pool, every decision judges the same
examples. So each draw counts how many earlier decisions its examples judged (the earlier draws, recomputed from
their seeds on today's pool: exact while the data is unchanged), and warns when that passes a budget.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from pmpo.data.examples import Dataset, example_key
from pmpo.evaluation.draw import heldout_draw


@dataclass(frozen=True)
class DecisionDraw:
    """The held-out examples one decision is judged on, how they were drawn, and how worn they are."""

    number: int  # decisions about this prompt before this one (this one's index)
    seed: int  # heldout_draw's seed: with the pool, it reproduces `examples`
    pool_size: int  # examples in the test split the draw is taken from
    pool_fingerprint: str
    examples: Dataset
    hashes: tuple[str, ...]  # each example's content hash (pmpo.data.examples.example_key), in order
    reused: int  # examples of this draw that judged at least one earlier decision
    mean_prior_uses: float  # earlier decisions each example judged, on average
    max_prior_uses: int
    warning: str | None  # the pool is too small for fresh draws, or its examples are worn past the budget


def decision_seed(base_seed: int, name: str, number: int) -> int:
    """The draw seed of decision `number` about prompt `name`: stable across processes and machines."""
    digest = hashlib.sha256(f"pmpo-decision/{base_seed}/{name}/{number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a non-negative int numpy takes as a seed


def decision_draw(
    pool: Dataset, n: int | None, *, base_seed: int, name: str, number: int, reuse_budget: int
) -> DecisionDraw:
    """Decision `number`'s draw of `n` examples (None: all) from `pool`, with its reuse counted against the budget."""
    seed = decision_seed(base_seed, name, number)
    drawn = heldout_draw(pool, n, seed=seed)
    hashes = tuple(example_key(e) for e in drawn.examples)
    uses: Counter[str] = Counter()
    for earlier in range(number):
        uses.update(
            set(example_key(e) for e in heldout_draw(pool, n, seed=decision_seed(base_seed, name, earlier)).examples)
        )
    prior = [uses[h] for h in hashes]
    mean = sum(prior) / len(prior)
    return DecisionDraw(
        number=number,
        seed=seed,
        pool_size=len(pool),
        pool_fingerprint=pool.fingerprint,
        examples=drawn,
        hashes=hashes,
        reused=sum(1 for u in prior if u),
        mean_prior_uses=mean,
        max_prior_uses=max(prior),
        warning=_warning(len(pool), len(drawn), mean, reuse_budget),
    )


def _warning(pool: int, drawn: int, mean_uses: float, budget: int) -> str | None:
    if drawn >= pool:
        return (
            f"the held-out pool ({pool} examples) is too small for fresh draws of {drawn}: every decision judges the "
            "same examples; add data or lower eval.max_examples"
        )
    if mean_uses >= budget:
        return (
            f"the held-out examples have judged {mean_uses:.1f} earlier decisions on average (budget {budget}): "
            f"the pool of {pool} is worn for draws of {drawn}; add data or lower eval.max_examples"
        )
    return None
