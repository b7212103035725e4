"""What the model now prefers on a hard example: the evidence the FULL rewrite request's diagnosis step
reasons from (the paper asks the rewriter why the current instruction fails before it rewrites).

Multiple-choice and preference examples show the wrong answer the model ranks first (lowest summed NLL
under the current prompt); supervised examples show the model's greedy answer. Each costs one scoring
pass or one greedy decode per hard example, so only the FULL template asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised, example_input
from pmpo.models.loading import LoadedModel, TextSide
from pmpo.scoring.loss import BaseScorer
from pmpo.text.rendering import render

# A greedy answer needs room for the reference's length and some slack; beyond 256 tokens it is a long
# rationale whose start already shows where the model goes wrong, and decoding it costs CPU time.
_MIN_ANSWER_TOKENS = 16
_MAX_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class Preferred:
    """The answer the model favours on one example under the current prompt, and how it was found."""

    text: str
    kind: Literal["distractor", "greedy"]
    # distractor: whether the model ranks it above the expected answer; None for a greedy answer.
    above_expected: bool | None


def preferred_answer(lm: LoadedModel | TextSide, scorer: BaseScorer, prompt: str, example: Example) -> Preferred | None:
    """The highest-ranked wrong option (choice/preference examples) or the greedy answer (supervised).

    The greedy answer comes from the scorer's decoder (the in-process model, or a remote scorer's server);
    `lm` (the scorer's model or its text side) renders the text. None: a scorer that cannot decode.
    """
    if isinstance(example, (MultipleChoice, Preference)):
        return _top_distractor(scorer, prompt, example)
    if isinstance(example, Supervised):
        decoder = scorer.decoder()
        if decoder is None:
            return None
        target_tokens = len(lm.tokenizer.encode(example.target, add_special_tokens=False))
        budget = min(max(2 * target_tokens + 8, _MIN_ANSWER_TOKENS), _MAX_ANSWER_TOKENS)
        context = render(lm.tokenizer, lm.placement, prompt, example_input(example)).text
        return Preferred(decoder.greedy([context], budget)[0].strip(), "greedy", None)
    raise TypeError(f"not an example: {example!r}")


def _top_distractor(scorer: BaseScorer, prompt: str, example: MultipleChoice | Preference) -> Preferred | None:
    if isinstance(example, MultipleChoice):
        expected, wrong = example.target, [o for o in example.options if o != example.target]
    else:
        expected, wrong = example.chosen, list(example.rejected)
    if not wrong:
        return None
    nll, _ = scorer.completions(prompt, [(example_input(example), c) for c in [expected, *wrong]])  # [1 + W]
    best = int(np.argmin(nll[1:]))  # lowest summed NLL = highest likelihood; ties go to the first
    return Preferred(wrong[best], "distractor", bool(nll[1 + best] < nll[0]))
