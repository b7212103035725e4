"""Token ids of a rendered (prompt, input[, completion]): the one place that turns text into what the model sees.

The whole text (context + completion) is tokenised at once, so a tokenizer that merges across the boundary or
adds a prefix space (SentencePiece: Llama-2, Mistral, Gemma) is scored on the tokens it would really produce.
The completion's tokens are found by character offsets. Rule at the boundary: a token that holds any character
of the completion is a completion (target) token, even if it also holds the end of the context.

Every sequence starts with exactly one BOS where the tokenizer adds one on its own: a chat template that
already writes BOS into the text keeps its own, and none is added in front of it.
Scoring (pmpo.scoring.loss), the naive reference aside, and generation (pmpo.models.generation) use these ids.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from pmpo.text.rendering import render_many
from pmpo.text.template import ExampleInput

_BOS: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Encoded:
    """Token ids of one rendered text and where its completion's tokens start."""

    ids: tuple[int, ...]
    target_start: int  # index of the first completion token; len(ids) when there is no completion

    @property
    def target(self) -> tuple[int, ...]:
        """The completion's ids (the scored tokens)."""
        return self.ids[self.target_start :]


def encode(tokenizer: Any, placement: str, prompt: str, input_text: ExampleInput, completion: str = "") -> Encoded:
    """Ids of `prompt` and `input_text` (a text, or fields for a template) placed as `placement` says, then `completion`."""
    return encode_many(tokenizer, placement, prompt, [(input_text, completion)])[0]


def render_pairs(
    tokenizer: Any, placement: str, prompt: str, pairs: Sequence[tuple[ExampleInput, str]]
) -> list[tuple[str, int]]:
    """(whole text, index of the completion's first character) of each (input, completion) under `prompt`.

    The one way every backend (in-process or remote) turns a prompt and an example into text. `prompt` may be
    an instruction, a `{{variable}}` template or a chat prompt (pmpo.text.template); an input is one text, or the
    example's `Fields` that fill the variables (`pmpo.data.examples.example_input` gives the right one).
    """
    contexts = render_many(tokenizer, placement, prompt, [inp for inp, _ in pairs])
    return [(ctx + completion, len(ctx)) for ctx, (_, completion) in zip(contexts, pairs)]


def encode_many(
    tokenizer: Any, placement: str, prompt: str, pairs: Sequence[tuple[ExampleInput, str]]
) -> list[Encoded]:
    """`encode` of many (input, completion) pairs under one prompt, batch-tokenised."""
    rendered = render_pairs(tokenizer, placement, prompt, pairs)
    return encode_texts(tokenizer, [text[:at] for text, at in rendered], [text[at:] for text, at in rendered])


def encode_texts(tokenizer: Any, contexts: Sequence[str], completions: Sequence[str]) -> list[Encoded]:
    """Ids of each rendered context + completion, with the completion's span located by character offsets."""
    texts = [c + t for c, t in zip(contexts, completions)]
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        starts = [_first_target(offsets, len(c)) for offsets, c in zip(enc["offset_mapping"], contexts)]
        ids = enc["input_ids"]
    else:  # no offsets: the target starts where the full text's ids stop agreeing with the context's own
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        alone = tokenizer(list(contexts), add_special_tokens=False)["input_ids"]
        starts = [common_length(a, b) if t else len(a) for a, b, t in zip(ids, alone, completions)]
        starts = [min(s, len(i)) for s, i in zip(starts, ids)]
    bos = bos_ids(tokenizer)
    out = []
    for row, start in zip(ids, starts):
        lead = bos if bos and row[:1] != list(bos) else ()
        out.append(Encoded(ids=(*lead, *row), target_start=len(lead) + start))
    return out


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of an already-rendered text (a rewrite request, a context), with the one BOS rule above."""
    return list(encode_texts(tokenizer, [text], [""])[0].ids)


def bos_ids(tokenizer: Any) -> tuple[int, ...]:
    """(bos,) when the tokenizer puts BOS in front of a text on its own, else ()."""
    try:
        return _BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = tokenizer.bos_token_id
    found = (bos,) if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else ()
    try:
        _BOS[tokenizer] = found
    except TypeError:  # not weak-referenceable: recomputed each time, still correct
        pass
    return found


def _first_target(offsets: Sequence[tuple[int, int]], context_chars: int) -> int:
    """Index of the first token holding a completion character (a straddling token counts as target)."""
    # Offsets grow along the text and the completion is its short tail: scan back from the end.
    i = len(offsets)
    while i > 0:
        start, end = offsets[i - 1]
        # end > context: it holds completion characters; start >= context: a zero-width token after the
        # context (e.g. a trimmed whitespace token) belongs to the completion too.
        if not (end > context_chars or (start >= context_chars and end > 0)):
            break
        i -= 1
    return i


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])
