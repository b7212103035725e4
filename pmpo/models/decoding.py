"""Greedy decoding behind one small contract, so evaluation and diagnosis never ask where the model runs.

A `Decoder` continues already-rendered texts (pmpo.text.rendering.render, pmpo.text.encoding.render_pairs) greedily.
`LocalDecoder` runs the in-process model (pmpo.models.generation.greedy); `pmpo.remote.decoder.RemoteDecoder` asks the
scoring server. A scorer hands out the decoder of its own model (`BaseScorer.decoder()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from pmpo.models.generation import greedy
from pmpo.models.loading import LoadedModel


class Decoder(Protocol):
    """Greedy continuations of rendered texts, each ending at the model's end-of-turn or after the budget."""

    def greedy(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The greedy continuation of each text, in order, without the text itself."""
        ...


@dataclass(frozen=True)
class LocalDecoder:
    """The in-process model: batched greedy decoding with left padding (pmpo.models.generation.greedy)."""

    lm: LoadedModel

    def greedy(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The in-process model's greedy continuation of each text."""
        return greedy(self.lm, texts, max_new_tokens=max_new_tokens)
