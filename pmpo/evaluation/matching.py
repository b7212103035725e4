"""Whether a generated answer is right: the answer part of a reply, normalisation, exact and lenient matching.

The rules follow SQuAD / lm-eval exact match, made lighter where they would erase an answer ("(A)"), plus APE's
lenient "contains" rule, made strict about what the reply commits to: the first task label it names decides, and
a negated label or a list of labels is wrong (docs/usage.md shows the cases, tests/unit/pmpo/evaluation test them).
"""

from __future__ import annotations

import re
import string
from typing import Callable, Literal, Sequence

from pmpo.data.examples import Dataset, Example, MultipleChoice, Preference

# exact: the reply's first line, normalised, is a reference (SQuAD/lm-eval exact match). contains: the first task
# label the reply names, as whole words, is a reference, not negated and not the head of a list of labels (APE's
# lenient execution metric, made strict so that "not positive" or "1, 2, ... 9" is not right): chat models answer
# "The review is positive."
Match = Literal["exact", "contains"]
# A task with at most this many distinct targets is a classification task: its targets are its labels.
MAX_LABELS = 20

_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_ANSWER_LEAD = re.compile(r"^(the\s+)?(final\s+)?answer\s*(is)?\s*[:\-]?\s*", re.IGNORECASE)


def extract_answer(output: str) -> str:
    """The answer part of a generated reply: its first non-empty line, without an 'Answer:' lead."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    return _ANSWER_LEAD.sub("", line)


def normalize(text: str) -> str:
    """SQuAD-style normalisation (lower case; no punctuation, articles or extra spaces), made lighter when
    that would leave nothing: "(A)" and "(B)" must stay distinct, not both become ""."""
    return _normalizer(text)(text)


def _squad(text: str) -> str:
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", _unpunctuated(text)).split())


def _unpunctuated(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def _spaced(text: str) -> str:
    return " ".join(text.lower().split())


def _normalizer(text: str) -> Callable[[str], str]:
    """The strongest normalisation that leaves `text` non-empty; a reply is compared under its reference's."""
    return next((f for f in (_squad, _unpunctuated) if f(text)), _spaced)


def references(example: Example) -> list[str]:
    """Accepted answers: the target (or chosen output) and its aliases."""
    if isinstance(example, Preference):
        return [example.chosen]
    return [example.target, *example.aliases]


def is_correct(output: str, example: Example, match: Match = "exact", labels: Sequence[str] = ()) -> bool:
    """Whether the reply gives a reference answer; `labels`: the task's answers, for the `contains` guard."""
    refs = references(example)
    answer = extract_answer(output)
    if any(_normalizer(r)(answer) == normalize(r) for r in refs):
        return True  # what exact accepts, contains accepts too
    if match == "exact":
        return False
    kept = {normalize(r) for r in refs}
    options = example.options if isinstance(example, MultipleChoice) else labels
    others = [o for o in options if normalize(o) not in kept]
    text = output.replace("\u2019", "'").lower()
    spans = [(m.start(), m.end(), True) for r in refs for m in _label_pattern(r).finditer(text)]
    spans += [(m.start(), m.end(), False) for o in others for m in _label_pattern(o).finditer(text)]
    if any(_NUMBER.fullmatch(r.strip()) for r in refs):  # a numeric answer: every number the reply names is one
        spans += [(m.start(), m.end(), _number_in(m.group(), refs)) for m in _NUMBER_WORD.finditer(text)]
    mentions = _first_at_each_place(spans)
    if not mentions or not mentions[0][2]:
        return False
    first = mentions[0]
    if _negated(text[: first[0]]):
        return False
    return not (len(mentions) > 1 and _LIST_GAP.fullmatch(text[first[1] : mentions[1][0]]))


# Words that negate the label right after them (within _NEGATION_REACH words of its clause). "No, positive" counts as
# negated: it reads as a refusal, and a judge that must guess what a reply commits to should call it wrong.
_NEGATORS = frozenset({"not", "no", "never", "neither", "nor", "without", "hardly"})
_NEGATION_REACH = 3
_CLAUSE_END = re.compile(r"[.!?;:\n]")
# What joins the items of a list: "positive or negative", "1, 2, 3, ... 9", "positive/negative". A single full
# stop does not: "positive. Negative words are absent." commits to positive.
_LIST_GAP = re.compile(r"(?:[\s,;/|&+*-]|\.{2,}|\u2026|\b(?:or|and|nor|to|then|etc)\b)*")
_NUMBER_WORD = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?(?![\w]|[.,]\d)")
_ARTICLES = frozenset({"a", "an", "the"})


def _label_pattern(label: str) -> re.Pattern[str]:
    """Where `label` appears as whole words, case and punctuation between words aside; a leading article optional.

    A label that is only a letter or an article ("(A)") is looked for with its brackets: the bare "a" is an article.
    """
    words = re.findall(r"\w+", label.lower())
    if words[1:] and words[0] in _ARTICLES:
        words = words[1:]
    if not words or (len(words) == 1 and (len(words[0]) == 1 or words[0] in _ARTICLES) and not label.strip().isalnum()):
        return re.compile(r"(?<!\w)" + re.escape(label.strip().lower()) + r"(?!\w)")
    return re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, words)) + r"(?!\w)")


def _number_in(number: str, refs: Sequence[str]) -> bool:
    return any(number.lstrip("+") == r.strip().lstrip("+") for r in refs)


def _first_at_each_place(spans: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    """Label mentions in reply order, the longest where two overlap ("very positive" over "positive")."""
    out: list[tuple[int, int, bool]] = []
    for span in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), not s[2])):
        if not out or span[0] >= out[-1][1]:
            out.append(span)
    return out


def _negated(before: str) -> bool:
    """Whether the text right before a label (its own clause, a few words) negates it."""
    clause = _CLAUSE_END.split(before)[-1]
    words = re.findall(r"[\w']+", clause)[-_NEGATION_REACH:]
    return any(w in _NEGATORS or w.endswith("n't") for w in words)


def task_labels(dataset: Dataset) -> tuple[str, ...]:
    """The distinct targets of a classification task (at most MAX_LABELS of them), else none.

    Numbers are left out: a worked answer names other numbers on its way to the right one.
    """
    targets = {t for e in dataset.examples if (t := getattr(e, "target", None)) is not None}
    if len(targets) > MAX_LABELS:
        return ()
    return tuple(sorted(t for t in targets if not _NUMBER.fullmatch(t.strip())))
