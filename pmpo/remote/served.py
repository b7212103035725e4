"""The served model as the remote scorer and decoder both reach it: one object, so both send the very same texts.

It holds the client, the text side that renders and counts tokens, the self-check's findings (how many texts go
in one request), the BOS rule (`prepend_bos`), how many requests go out at once, and the tokens the server
scored and generated for us.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from pmpo.models.loading import LoadedModel, TextSide
from pmpo.models.usage import Usage
from pmpo.remote.check import ServerFacts, verified
from pmpo.remote.client import CompletionsClient, RemoteError

T = TypeVar("T")
R = TypeVar("R")


class ServedModel:
    """One served model, reached through `client`, whose texts `text` renders (its tokenizer, placement, context)."""

    def __init__(self, text: TextSide | LoadedModel, client: CompletionsClient):
        self.text = text
        self.client = client
        self.usage = Usage()  # tokens the server scored and generated for us
        self._facts: ServerFacts | None = None

    def identity(self) -> str:
        """Base URL, served model id and pinned revision."""
        return self.client.identity()

    def facts(self) -> ServerFacts:
        """The server's self-check findings (the check runs on first use)."""
        if self._facts is None:
            self._facts = verified(self.client, self.bos())
        return self._facts

    def bos(self) -> str:
        """The BOS text put in front of every text sent (`prepend_bos`), else nothing."""
        return (self.text.tokenizer.bos_token or "") if self.client.settings.prepend_bos else ""

    def as_sent(self, text: str) -> str:
        """`text` as the server gets it: BOS in front under `prepend_bos`, never two (a chat template may open
        with BOS already: SmolLM2's <|im_start|>)."""
        bos = self.bos()
        return text if not bos or text.startswith(bos) else bos + text

    def in_requests(self, items: Sequence[T], request: Callable[[Sequence[T]], R]) -> list[R]:
        """`request` on each run of `items` that fits one request, `max_concurrency` requests at once, in order.

        One candidate's texts go out in order, so a server's prefix cache sees the shared prompt back to back.
        """
        per_request = self.facts().prompts_per_request
        chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
        with ThreadPoolExecutor(max_workers=self.client.settings.max_concurrency) as pool:
            return list(pool.map(request, chunks))

    def error(self, problem: object) -> RemoteError:
        """A one-line error about this server."""
        return RemoteError(f"the scoring server at {self.client.settings.base_url}: {problem}")
