"""`RemoteScorer`: a scorer (`pmpo.scoring.loss.BaseScorer`) whose new (prompt, input, completion) pairs a server scores.

The loss matrix, the preference loss and the memo are the base's; only how new pairs are scored differs. Texts are
rendered by pmpo.text.encoding.render_pairs, exactly as the in-process path renders them, and the completion's
tokens are found in the echoed reply by character offsets (pmpo.remote.logprobs).
"""

from __future__ import annotations

from typing import Sequence

from pmpo.errors import ContextLengthError
from pmpo.models.decoding import Decoder
from pmpo.models.loading import LoadedModel, TextSide
from pmpo.models.usage import Usage
from pmpo.remote.client import CompletionsClient
from pmpo.remote.decoder import RemoteDecoder
from pmpo.remote.logprobs import LogprobsMissing, completion_nll
from pmpo.remote.served import ServedModel
from pmpo.scoring.loss import BaseScorer, ScorerSettings, check_encoded
from pmpo.text.encoding import encode_texts, render_pairs


class RemoteScorer(BaseScorer):
    """Scores completions under prompts through an OpenAI-compatible `/v1/completions` server."""

    def __init__(
        self, text: TextSide | LoadedModel, client: CompletionsClient, settings: ScorerSettings = ScorerSettings()
    ):
        super().__init__(text, settings)  # the text side renders and counts tokens: no weights here
        self.served = ServedModel(text, client)  # shared with the decoder: both send the very same texts

    @property
    def usage(self) -> Usage:
        """Tokens the server scored and generated for us."""
        return self.served.usage

    def decoder(self) -> Decoder:
        """Greedy answers of the served model, from the same server (counted in `usage`)."""
        return RemoteDecoder(self.served)

    def _score_new(self, prompt: str, pairs: list[tuple[str, str]], owner_of: dict) -> list[tuple[float, int]]:
        rendered = render_pairs(self.lm.tokenizer, self.lm.placement, prompt, pairs)
        self._check_fits(rendered, [owner_of.get(p) for p in pairs])
        sent = [self.served.as_sent(t) for t, _ in rendered]
        rendered = [(s, at + len(s) - len(t)) for s, (t, at) in zip(sent, rendered)]
        scored = [r for chunk in self.served.in_requests(rendered, self._score_chunk) for r in chunk]
        for _, _, echoed in scored:  # counted here, not in the worker threads
            self.usage.scored(echoed)
            self.tokens_computed += echoed
        return [(nll, tokens) for nll, tokens, _ in scored]

    def _score_chunk(self, chunk: Sequence[tuple[str, int]]) -> list[tuple[float, int, int]]:
        """(summed NLL, target tokens, tokens the server read) of each text in one request."""
        choices = self.served.client.complete([text for text, _ in chunk])
        out = []
        for (text, start), choice in zip(chunk, choices):
            try:
                nll, tokens = completion_nll(choice, text, start, self.served.bos())
            except LogprobsMissing as exc:
                raise self.served.error(exc) from None
            out.append((nll, tokens, len(choice["logprobs"]["text_offset"])))
        return out

    def _check_fits(self, rendered: Sequence[tuple[str, int]], owners: Sequence[int | None]) -> None:
        """The in-process scorer's checks (context length, empty reference), on our tokenizer's count."""
        encoded = encode_texts(self.lm.tokenizer, [t[:at] for t, at in rendered], [t[at:] for t, at in rendered])
        for enc, owner in zip(encoded, owners):
            check_encoded(enc, 0, owner, self.lm.context_length)
        for (text, at), owner in zip(rendered, owners):
            if at >= len(text):
                where = f"example {owner}" if owner is not None else "an example"
                raise ContextLengthError(f"{where} has an empty reference output")
