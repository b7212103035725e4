"""`RemoteDecoder`: greedy answers of the served model, from `/v1/completions` without echo.

Texts are rendered here by the local tokenizer's template (as for scoring) and sent as they are, with the same
leading BOS as RemoteScorer sends when `prepend_bos` is set, so the server answers the very text it scores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Sequence

from pmpo.models.generation import stop_texts
from pmpo.remote.client import Generated, RemoteError
from pmpo.remote.logprobs import LogprobsMissing

if TYPE_CHECKING:
    from pmpo.remote.scorer import RemoteScorer


class RemoteDecoder:
    """Greedy decoding by the scorer's server: several prompts per request, `max_concurrency` requests at once."""

    def __init__(self, scorer: "RemoteScorer"):
        self.scorer = scorer

    def greedy(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The served model's greedy continuation (temperature 0) of each text, stopped at an end-of-turn marker."""
        if max_new_tokens < 1 or not texts:  # llama.cpp reads max_tokens 0 as "until the context is full"
            return [""] * len(texts)
        sent = [self.scorer.as_sent(t) for t in texts]  # the very texts scoring sends
        per_request = self.scorer.facts().prompts_per_request
        chunks = [sent[i : i + per_request] for i in range(0, len(sent), per_request)]
        ask = partial(self._request, max_tokens=max_new_tokens, stop=stop_texts(self.scorer.tokenizer))
        with ThreadPoolExecutor(max_workers=self.scorer.endpoint.settings.max_concurrency) as pool:
            replies = list(pool.map(ask, chunks))
        for chunk, reply in zip(chunks, replies):  # counted here, not in the worker threads
            self._count(chunk, reply)
        return [text for reply in replies for text in reply.texts]

    def _request(self, chunk: Sequence[str], *, max_tokens: int, stop: Sequence[str]) -> Generated:
        try:
            return self.scorer.endpoint.generate(chunk, max_tokens=max_tokens, stop=stop)
        except LogprobsMissing as exc:  # fewer choices than prompts
            raise RemoteError(f"the scoring server at {self.scorer.endpoint.settings.base_url}: {exc}") from None

    def _count(self, chunk: Sequence[str], reply: Generated) -> None:
        """Charge a request to the scorer's usage: the server's own token counts, else the local tokenizer's.

        A forward pass per generated token: the most a server spends (one that batches prompts spends fewer)."""
        tok = self.scorer.tokenizer
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = sum(len(tok.encode(t, add_special_tokens=False)) for t in chunk)
        new = reply.completion_tokens
        if new is None:
            new = sum(len(tok.encode(t, add_special_tokens=False)) for t in reply.texts)
        self.scorer.usage.generated(new, new, prompt)
