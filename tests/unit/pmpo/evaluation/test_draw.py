"""The held-out draw: seeded, stratified by label, deterministic, never the file's first N."""

from collections import Counter

from pmpo.data import Dataset, MultipleChoice, Preference, Supervised
from pmpo.evaluation.draw import heldout_draw


def _sorted_reviews(n_pos: int = 60, n_neg: int = 40) -> Dataset:
    """A file sorted by label: every positive review first."""
    labels = ["positive"] * n_pos + ["negative"] * n_neg
    return Dataset("sorted", tuple(Supervised(f"review {i}", label) for i, label in enumerate(labels)))


def test_same_seed_same_examples_other_seed_other_examples():
    data = _sorted_reviews()
    a, b, c = (heldout_draw(data, 20, seed=s) for s in (0, 0, 1))
    assert a.examples == b.examples
    assert a.examples != c.examples


def test_each_label_keeps_its_share():
    data = _sorted_reviews(60, 40)
    drawn = heldout_draw(data, 20, seed=3)
    assert Counter(e.target for e in drawn.examples) == {"positive": 12, "negative": 8}
    odd = heldout_draw(_sorted_reviews(50, 25), 7, seed=0)  # shares 4.67 and 2.33: to within one example
    counts = Counter(e.target for e in odd.examples)
    assert sum(counts.values()) == 7 and abs(counts["positive"] - 14 / 3) < 1 and abs(counts["negative"] - 7 / 3) < 1


def test_a_sorted_file_does_not_give_its_first_n():
    data = _sorted_reviews()
    drawn = heldout_draw(data, 20, seed=0)
    assert drawn.examples != data.examples[:20]
    assert {e.target for e in drawn.examples} == {"positive", "negative"}


def test_multiple_choice_is_stratified_by_the_correct_option():
    rows = [MultipleChoice(f"q{i}", ("(A)", "(B)"), "(A)" if i < 30 else "(B)") for i in range(40)]
    drawn = heldout_draw(Dataset("mc", tuple(rows)), 8, seed=5)
    assert Counter(e.target for e in drawn.examples) == {"(A)": 6, "(B)": 2}


def test_unstratified_tasks_and_small_test_sets():
    free = Dataset("free", tuple(Supervised(f"q{i}", f"answer {i}") for i in range(40)))
    drawn = heldout_draw(free, 10, seed=0)
    assert len(drawn) == 10 and len(set(drawn.examples)) == 10 and drawn.examples != free.examples[:10]
    pairs = Dataset("pairs", tuple(Preference(f"q{i}", "good", ("bad",)) for i in range(12)))
    assert len(heldout_draw(pairs, 5, seed=0)) == 5
    assert heldout_draw(free, None, seed=0) is free and heldout_draw(free, 400, seed=0) is free


def test_the_drawn_examples_keep_the_file_order():
    data = _sorted_reviews()
    drawn = heldout_draw(data, 30, seed=2)
    positions = [data.examples.index(e) for e in drawn.examples]
    assert positions == sorted(positions)
