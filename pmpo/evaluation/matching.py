"""Whether a generated answer is right: the answer part of a reply, normalisation, exact and lenient matching.

The rules follow SQuAD / lm-eval exact match, made lighter where they would erase an answer ("(A)"), plus APE's
lenient "contains" rule, guarded so that a reply naming every label of the task is not right.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Literal, Sequence

from pmpo.data.examples import Dataset, Example, MultipleChoice, Preference

# exact: the reply's first line, normalised, is a reference (SQuAD/lm-eval exact match). contains: a reference
# appears as whole words in the reply and no other label of the task does (APE's lenient execution metric,
# guarded so that a reply naming every label is not right): chat models answer "The review is positive."
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
    if match == "exact":
        answer = extract_answer(output)
        return any(_normalizer(r)(answer) == normalize(r) for r in refs)
    kept = {normalize(r) for r in refs}
    options = example.options if isinstance(example, MultipleChoice) else labels
    others = [o for o in options if normalize(o) not in kept]
    return any(_names(output, r) for r in refs) and not any(_names(output, o) for o in others)


def _names(output: str, answer: str) -> bool:
    """Whether `answer` appears as whole words in `output`, both normalised as the answer needs."""
    norm = _normalizer(answer)
    return bool(norm(answer)) and f" {norm(answer)} " in f" {norm(output)} "


def task_labels(dataset: Dataset) -> tuple[str, ...]:
    """The distinct targets of a classification task (at most MAX_LABELS of them), else none.

    Numbers are left out: a worked answer names other numbers on its way to the right one.
    """
    targets = {t for e in dataset.examples if (t := getattr(e, "target", None)) is not None}
    if len(targets) > MAX_LABELS:
        return ()
    return tuple(sorted(t for t in targets if not _NUMBER.fullmatch(t.strip())))
