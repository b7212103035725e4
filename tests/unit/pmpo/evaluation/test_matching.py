"""Answer matching: exact and lenient (contains) rules, the task's labels, normalisation."""

import pytest

from pmpo.data import Dataset, MultipleChoice, Supervised
from pmpo.evaluation.matching import is_correct, normalize, task_labels

REVIEW = Supervised("Great phone, love it.", "positive")
LABELS = ("negative", "positive")


@pytest.mark.parametrize(
    ("reply", "exact", "contains"),
    [
        ("positive", True, True),
        ("Answer: Positive.", True, True),
        ("The review is positive.", False, True),
        ("positive or negative, hard to say", False, False),  # names another label too
        ("The sentiment is not clear.", False, False),
        ("positively glowing", False, False),  # whole words only
        ("\n\npositive\nbecause the user loves it", True, True),
    ],
)
def test_exact_and_contains(reply, exact, contains):
    assert is_correct(reply, REVIEW, "exact", LABELS) is exact
    assert is_correct(reply, REVIEW, "contains", LABELS) is contains


def test_aliases_count_and_options_guard_multiple_choice():
    question = MultipleChoice("Which is a fruit?", ("apple", "brick", "chair"), "apple", aliases=("an apple",))
    assert is_correct("It is an apple.", question, "contains")
    assert not is_correct("apple or brick", question, "contains")
    assert is_correct("apple", question, "exact")


def test_labels_are_the_few_non_numeric_targets():
    reviews = Dataset("r", tuple(Supervised(f"text {i}", LABELS[i % 2]) for i in range(10)))
    assert task_labels(reviews) == LABELS
    sums = Dataset("s", tuple(Supervised(f"{i} + 1", str(i + 1)) for i in range(10)))
    assert task_labels(sums) == ()  # numbers: a worked answer names others on its way
    assert is_correct("3 + 4 = 7", Supervised("3 + 4", "7"), "contains", task_labels(sums))
    free_text = Dataset("f", tuple(Supervised(f"q{i}", f"answer {i}") for i in range(30)))
    assert task_labels(free_text) == ()


def test_bracketed_labels_stay_distinct():
    assert normalize("(A)") != normalize("(B)") and normalize("(A)") != ""
    assert normalize("The Answer.") == "answer"  # SQuAD-style where that leaves something
    question = MultipleChoice("Pick one.", ("(A)", "(B)", "(C)"), "(B)")
    assert is_correct("(B)", question, "exact") and not is_correct("(A)", question, "exact")
    assert is_correct("The answer is (B).", question, "contains")
    assert not is_correct("The answer is (A).", question, "contains")
    assert not is_correct("(A) or (B)", question, "contains")
