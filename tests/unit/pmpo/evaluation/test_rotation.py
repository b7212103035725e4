"""A fresh held-out draw per decision: seeded by the decision's number, stratified, its reuse counted and warned."""

from collections import Counter

from pmpo.data import Dataset, Supervised
from pmpo.data.examples import example_key
from pmpo.evaluation.draw import heldout_draw
from pmpo.evaluation.rotation import decision_draw, decision_seed


def _pool(n: int = 200) -> Dataset:
    labels = ["positive"] * (n // 2) + ["negative"] * (n - n // 2)  # sorted by label, as files often are
    return Dataset("reviews", tuple(Supervised(f"review {i}", label) for i, label in enumerate(labels)))


def _draw(pool, n, number, budget=10, name="sent"):
    return decision_draw(pool, n, base_seed=0, name=name, number=number, reuse_budget=budget)


def test_seeds_are_stable_and_differ_by_decision_prompt_and_split_seed():
    assert decision_seed(0, "sent", 3) == decision_seed(0, "sent", 3)
    seeds = {decision_seed(0, "sent", k) for k in range(50)} | {decision_seed(1, "sent", 0), decision_seed(0, "x", 0)}
    assert len(seeds) == 52 and all(0 <= s < 2**63 for s in seeds)


def test_each_decision_judges_a_fresh_stratified_draw_an_auditor_can_redo():
    pool = _pool()
    first, second = _draw(pool, 20, 0), _draw(pool, 20, 1)
    assert set(first.hashes) != set(second.hashes)
    assert Counter(e.target for e in second.examples.examples) == {"positive": 10, "negative": 10}
    redone = heldout_draw(pool, 20, seed=second.seed)  # the record's seed and the pool give the same examples
    assert tuple(example_key(e) for e in redone.examples) == second.hashes
    assert second.examples.rows == redone.rows and second.pool_size == 200


def test_reuse_is_counted_from_the_earlier_draws():
    pool = _pool(40)
    first = _draw(pool, 20, 0)
    assert (first.reused, first.mean_prior_uses, first.max_prior_uses, first.warning) == (0, 0.0, 0, None)
    later = _draw(pool, 20, 5)
    earlier = Counter()
    for k in range(5):
        earlier.update(set(_draw(pool, 20, k).hashes))
    assert later.reused == sum(1 for key in later.hashes if earlier[key])
    assert later.mean_prior_uses == sum(earlier[key] for key in later.hashes) / 20
    assert 0 < later.reused <= 20 and later.max_prior_uses <= 5


def test_a_spent_budget_warns():
    pool = _pool(40)
    assert _draw(pool, 20, 3, budget=10).warning is None
    worn = _draw(pool, 20, 30, budget=10)  # about 15 earlier uses per example, past the budget of 10
    assert worn.mean_prior_uses >= 10 and "budget 10" in worn.warning


def test_a_pool_no_larger_than_the_draw_warns_at_once():
    pool = _pool(12)
    for n in (12, 50, None):
        d = _draw(pool, n, 0)
        assert len(d.examples) == 12 and "too small for fresh draws" in d.warning
    again = _draw(pool, 12, 4)
    assert again.hashes == _draw(pool, 12, 0).hashes and again.reused == 12 and again.mean_prior_uses == 4.0
