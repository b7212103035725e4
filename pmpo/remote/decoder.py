"""`RemoteDecoder`: greedy answers of the served model, from `/v1/completions` without echo.

Texts are rendered by the local tokenizer's template (as for scoring) and sent as `ServedModel.as_sent` sends the
scored texts, leading BOS included under `prepend_bos`, so the server answers the very text it scores.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from pmpo.models.generation import stop_texts
from pmpo.remote.client import Generated
from pmpo.remote.logprobs import LogprobsMissing
from pmpo.remote.served import ServedModel


class RemoteDecoder:
    """Greedy decoding by the served model: several prompts per request, `max_concurrency` requests at once."""

    def __init__(self, served: ServedModel):
        self.served = served

    def greedy(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The served model's greedy continuation (temperature 0) of each text, stopped at an end-of-turn marker."""
        if max_new_tokens < 1 or not texts:  # llama.cpp reads max_tokens 0 as "until the context is full"
            return [""] * len(texts)
        sent = [self.served.as_sent(t) for t in texts]  # the very texts scoring sends
        ask = partial(self._request, max_tokens=max_new_tokens, stop=stop_texts(self.served.text.tokenizer))
        answered = self.served.in_requests(sent, ask)
        for chunk, reply in answered:  # counted here, not in the worker threads
            self._count(chunk, reply)
        return [text for _, reply in answered for text in reply.texts]

    def _request(
        self, chunk: Sequence[str], *, max_tokens: int, stop: Sequence[str]
    ) -> tuple[Sequence[str], Generated]:
        try:
            return chunk, self.served.client.generate(chunk, max_tokens=max_tokens, stop=stop)
        except LogprobsMissing as exc:  # fewer choices than prompts
            raise self.served.error(exc) from None

    def _count(self, chunk: Sequence[str], reply: Generated) -> None:
        """Charge a request to the served model's usage: the server's own token counts, else the local tokenizer's.

        A forward pass per generated token: the most a server spends (one that batches prompts spends fewer)."""
        tok = self.served.text.tokenizer
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = sum(len(tok.encode(t, add_special_tokens=False)) for t in chunk)
        new = reply.completion_tokens
        if new is None:
            new = sum(len(tok.encode(t, add_special_tokens=False)) for t in reply.texts)
        self.served.usage.generated(new, new, prompt)
