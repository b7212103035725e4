"""`RemoteScorer`: pmpo.scoring.loss.Scorer's surface, with each (prompt, input, completion) scored by a server.

The loss matrix, the preference loss and the memo are Scorer's own (inherited); only how new pairs are scored
differs. Texts are rendered by pmpo.text.encoding.render_pairs, exactly as the in-process path renders them, and
the completion's tokens are found in the echoed reply by character offsets (pmpo.remote.logprobs).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from pmpo.text.encoding import encode_texts, render_pairs
from pmpo.errors import ContextLengthError
from pmpo.scoring.loss import Scorer, ScorerSettings
from pmpo.models.loading import TextSide
from pmpo.remote.check import ServerFacts, verified
from pmpo.remote.client import Endpoint, RemoteError
from pmpo.remote.decoder import RemoteDecoder
from pmpo.remote.logprobs import LogprobsMissing, completion_nll
from pmpo.models.usage import Usage


class RemoteScorer(Scorer):
    """Scores completions under prompts through an OpenAI-compatible `/v1/completions` server."""

    def __init__(self, text: TextSide, endpoint: Endpoint, settings: ScorerSettings = ScorerSettings()):
        super().__init__(text, settings)  # type: ignore[arg-type]  # `lm` is the text side: no weights here
        self.endpoint = endpoint
        self.usage = Usage()  # tokens the server scored and generated for us
        self._facts: ServerFacts | None = None

    @property
    def tokenizer(self):
        """The tokenizer that renders chat templates and counts tokens (the served model's, by settings)."""
        return self.lm.tokenizer

    @property
    def placement(self) -> str:
        """Where the prompt goes in the rendered text."""
        return self.lm.placement

    @property
    def context_length(self) -> int:
        """The model's context in tokens."""
        return self.lm.context_length

    @property
    def identity(self) -> str:
        """Base URL, served model id and pinned revision."""
        return self.endpoint.identity()

    def facts(self) -> ServerFacts:
        """The server's self-check findings (the check runs on first use)."""
        if self._facts is None:
            self._facts = verified(self.endpoint, self.bos())
        return self._facts

    def decoder(self) -> RemoteDecoder:
        """Greedy answers of the served model, from the same server (counted in `usage`)."""
        return RemoteDecoder(self)

    def bos(self) -> str:
        """The BOS text put in front of every text sent (`prepend_bos`), else nothing."""
        return (self.lm.tokenizer.bos_token or "") if self.endpoint.settings.prepend_bos else ""

    def as_sent(self, text: str) -> str:
        """`text` as the server gets it: BOS in front under `prepend_bos`, never two (a chat template may open
        with BOS already: SmolLM2's <|im_start|>)."""
        bos = self.bos()
        return text if not bos or text.startswith(bos) else bos + text

    def _score_new(self, prompt: str, pairs: list[tuple[str, str]], owner_of: dict) -> None:
        rendered = render_pairs(self.lm.tokenizer, self.lm.placement, prompt, pairs)
        self._check_fits(rendered, [owner_of.get(p) for p in pairs])
        sent = [self.as_sent(t) for t, _ in rendered]
        rendered = [(s, at + len(s) - len(t)) for s, (t, at) in zip(sent, rendered)]
        per_request = self.facts().prompts_per_request
        chunks = [rendered[i : i + per_request] for i in range(0, len(rendered), per_request)]
        # One candidate's texts go out in order, so a server's prefix cache sees the shared prompt back to back.
        with ThreadPoolExecutor(max_workers=self.endpoint.settings.max_concurrency) as pool:
            results = list(pool.map(self._score_chunk, chunks))
        scored = [r for chunk in results for r in chunk]
        for pair, (nll, tokens, echoed) in zip(pairs, scored):
            self._memo[(prompt, *pair)] = (nll, tokens)
            self.usage.scored(echoed)  # counted here, not in the worker threads
            self.tokens_computed += echoed

    def _score_chunk(self, chunk: Sequence[tuple[str, int]]) -> list[tuple[float, int, int]]:
        """(summed NLL, target tokens, tokens the server read) of each text in one request."""
        choices = self.endpoint.complete([text for text, _ in chunk])
        out = []
        for (text, start), choice in zip(chunk, choices):
            try:
                nll, tokens = completion_nll(choice, text, start, self.bos())
            except LogprobsMissing as exc:
                raise RemoteError(f"the scoring server at {self.endpoint.settings.base_url}: {exc}") from None
            out.append((nll, tokens, len(choice["logprobs"]["text_offset"])))
        return out

    def _check_fits(self, rendered: Sequence[tuple[str, int]], owners: Sequence[int | None]) -> None:
        """The in-process scorer's checks (context length, empty reference), on our tokenizer's count."""
        encoded = encode_texts(self.lm.tokenizer, [t[:at] for t, at in rendered], [t[at:] for t, at in rendered])
        for enc, owner in zip(encoded, owners):
            self._check(enc, 0, owner)
        for (text, at), owner in zip(rendered, owners):
            if at >= len(text):
                where = f"example {owner}" if owner is not None else "an example"
                raise ContextLengthError(f"{where} has an empty reference output")
