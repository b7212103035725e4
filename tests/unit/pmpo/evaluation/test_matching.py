"""Answer matching: exact and lenient (contains) rules, the task's labels, normalisation.

CASES is the table docs/usage.md shows ("What each match rule accepts"): a test checks every row there is one here.
"""

import re
from pathlib import Path

import pytest

from pmpo.data import Dataset, MultipleChoice, Supervised
from pmpo.evaluation.matching import is_correct, normalize, task_labels

REVIEW = Supervised("Great phone, love it.", "positive")
LABELS = ("negative", "positive")


# (reference, reply, exact, contains); labels: positive/negative for a word reference, options (A)-(C) for a
# bracketed one, any number for a numeric one.
CASES = [
    ("positive", "positive", True, True),
    ("positive", "Answer: Positive.", True, True),
    ("positive", "The review is positive.", False, True),
    ("positive", "positive. Negative words are absent.", False, True),
    ("positive", "positive, not negative", False, True),
    ("positive", "positive or negative, hard to say", False, False),
    ("positive", "negative, not positive", False, False),
    ("positive", "not positive", False, False),
    ("positive", "It isn't positive.", False, False),
    ("positive", "No, positive.", False, False),
    ("positive", "This is not a negative review, it is positive.", False, False),
    ("positive", "The sentiment is not clear.", False, False),
    ("positive", "positively glowing", False, False),
    ("7", "7", True, True),
    ("7", "The answer is 7.", True, True),
    ("7", "I count 7 objects, not 8.", False, True),
    ("7", "1, 2, 3, ... 9", False, False),
    ("7", "7 or 8", False, False),
    ("7", "3 + 4 = 7", False, False),
    ("(B)", "(B)", True, True),
    ("(B)", "B", True, True),
    ("(B)", "This is a hard one: (B)", False, True),
    ("(B)", "(A) or (B)", False, False),
]


def _example(reference: str):
    if reference.startswith("("):
        return MultipleChoice("Pick one.", ("(A)", "(B)", "(C)"), reference), ()
    return Supervised("Great phone, love it.", reference), (() if reference.isdigit() else LABELS)


@pytest.mark.parametrize(("reference", "reply", "exact", "contains"), CASES)
def test_what_each_match_rule_accepts(reference, reply, exact, contains):
    example, labels = _example(reference)
    assert is_correct(reply, example, "exact", labels) is exact
    assert is_correct(reply, example, "contains", labels) is contains


def test_docs_table_is_the_tested_cases():
    docs = (Path(__file__).parents[4] / "docs" / "usage.md").read_text()
    section = docs.split("### What each match rule accepts", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([^`]*)` \| `([^`]*)` \| (yes|no) \| (yes|no) \|$", section, re.MULTILINE)
    assert rows, "no table under 'What each match rule accepts' in docs/usage.md"
    shown = {(ref, reply.replace("\\|", "|"), e == "yes", c == "yes") for ref, reply, e, c in rows}
    assert shown == set(CASES)


def test_a_reply_that_opens_with_the_answer_line_is_right_under_both():
    reply = "\n\npositive\nbecause the user loves it"
    assert is_correct(reply, REVIEW, "exact", LABELS) and is_correct(reply, REVIEW, "contains", LABELS)


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
    # A numeric reference makes every number a label: the first one named decides.
    assert is_correct("It makes 7.", Supervised("3 + 4", "7"), "contains", task_labels(sums))
    assert not is_correct("3 + 4 = 7", Supervised("3 + 4", "7"), "contains", task_labels(sums))
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


def test_a_label_that_holds_a_negator_is_a_label_not_a_negation():
    pair = Supervised("A. B.", "not_entailment")
    labels = ("entailment", "not_entailment")
    assert is_correct("The answer is not_entailment.", pair, "contains", labels)
    assert not is_correct("not_entailment", Supervised("A. B.", "entailment"), "contains", labels)


def test_the_longest_label_at_a_place_is_the_one_named():
    review = Supervised("Wow.", "very positive")
    labels = ("positive", "very positive", "negative")
    assert is_correct("It is very positive.", review, "contains", labels)
    assert not is_correct("It is positive.", review, "contains", labels)
