"""Whether a rewritten prompt copies a training example: a run of words taken from the example the request showed.

A small rewriter, shown one hard example, often writes that example into the instruction ("Classify reviews
like 'the battery died after two days'") or asks for its answer by name. Such a prompt lowers the training loss by
shifting the label prior, not by stating the task, and it reads as nothing a team would ship.
"""

from __future__ import annotations

import string
from typing import Iterable

from pmpo.data.examples import Example, Preference
from pmpo.text.template import VARIABLE

# A copy is a run of this many consecutive words that the example has too. Chosen from measured rewrites of the
# bundled model (benchmarks/bench_copies.py, docs/benchmarks.md; 119 variants on three tasks): at 3 words it
# rejected 4, three of which quote the example ("Is Ben Simmons calling for the screen?", "What is the date in
# 10 days ago?", "Infer the date tomorrow.") and one a format every example of the task shares ("MM/DD/YYYY");
# at 4 words only one was caught, and names or questions of the example slipped through in other words around them.
COPY_RUN_WORDS = 3

_PUNCTUATION = str.maketrans(string.punctuation + "\u2018\u2019\u201c\u201d", " " * (len(string.punctuation) + 4))
_BREAK = "\x00"  # stands where a template variable was: no run of words spans it


def example_texts(example: Example) -> tuple[str, ...]:
    """The texts of an example a rewrite could copy: its input (or named fields) and its reference answers."""
    inputs = [value for _, value in example.fields] or [example.input]
    if isinstance(example, Preference):
        return (*inputs, example.chosen)
    # Multiple choice: the correct option only; the other options are the task's labels, fair to name.
    return (*inputs, example.target, *example.aliases)


def words(text: str) -> list[str]:
    """Normalised words: lower case, punctuation stripped; a template variable becomes a break."""
    text = VARIABLE.sub(f" {_BREAK} ", text)
    return text.lower().translate(_PUNCTUATION).split()


def copied_run(text: str, sources: Iterable[str], *, prompt: str, n: int = COPY_RUN_WORDS) -> str | None:
    """The first run of `n` words of `text` that a source has too, unless all of them are words of `prompt`.

    Template variables are exempt (they break a run), and so are the current prompt's own words: a rewrite
    that keeps the instruction's phrases is not copying an example, even where the example repeats them.
    """
    own = set(words(prompt))
    grams = {g for s in sources for g in _ngrams(words(s), n)}
    for gram in _ngrams(words(text), n):
        if gram in grams and not own.issuperset(gram):
            return " ".join(gram)
    return None


def _ngrams(tokens: list[str], n: int) -> Iterable[tuple[str, ...]]:
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if _BREAK not in gram:
            yield gram
