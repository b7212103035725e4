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
# bundled model (benchmarks/bench_copies.py, docs/benchmarks.md): at 3 words ordinary task phrases the example
# happens to share ("of the review", "the following question") are caught; from 4 on, the variants caught are
# the ones that quote the example's own content, and 5 already lets short quoted phrases through.
COPY_RUN_WORDS = 4

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
