"""Context budgets: a prompt or an example too long for the model is named before any work starts, and a rewrite
request is cut to fit the context with room for the reply.

The checks take anything with `tokenizer`, `placement` and `context_length` (a `LoadedModel`, or the weightless
`pmpo.models.loading.TextSide`), so a flow can run them before it creates a record or loads the weights.
"""

from __future__ import annotations

from typing import Any

from pmpo.data.examples import Dataset
from pmpo.errors import ContextLengthError
from pmpo.scoring.loss import Objective, example_rows
from pmpo.text.encoding import encode, encode_many


def check_fits(text_side: Any, prompt: str, dataset: Dataset, mc_objective: Objective = "preference") -> None:
    """Raise ContextLengthError naming the prompt, or the example by its row in the source, when it does not fit."""
    tok, placement, limit = text_side.tokenizer, text_side.placement, text_side.context_length
    prompt_tokens = len(encode(tok, placement, prompt, "").ids)
    if prompt_tokens >= limit:
        raise ContextLengthError(
            f"the prompt is {prompt_tokens} tokens as the model sees it, and the model's context is {limit}: "
            "shorten the prompt"
        )
    pairs, owners = [], []
    for i, example in enumerate(dataset.examples):
        input_text, completions, _ = example_rows(example, mc_objective)
        pairs += [(input_text, c) for c in completions]
        owners += [i] * len(completions)
    for (_, completion), owner, enc in zip(pairs, owners, encode_many(tok, placement, prompt, pairs)):
        if len(enc.ids) > limit:
            raise ContextLengthError(
                f"{dataset.where(owner)} is {len(enc.ids)} tokens with the prompt (prompt {prompt_tokens}, "
                f"reference {len(enc.target)}), over the model's context of {limit}: shorten it or drop it from the data"
            )
