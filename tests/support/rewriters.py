"""A scripted stand-in for the rewriter, for loop tests that need to know exactly what each request returns."""

from __future__ import annotations

from typing import Callable

from pmpo.models.usage import Usage


class ScriptedRewriter:
    """A chat-like rewriter whose replies to a request are `replies(seed, n)`; it counts its requests."""

    def __init__(self, replies: Callable[[int, int], list[str]], identity: str = "scripted", n_params: int | None = 1):
        self.replies, self.identity = replies, identity
        self.n_params = n_params  # 1: small, so the SHORT form and the splitter, as the bundled model gets
        self.usage = Usage()
        self.requests = 0

    def reply(self, message, *, n, temperature, top_p, seed, max_tokens, stop=()):
        """The scripted replies, each closed as the rewrite form asks."""
        self.requests += 1
        return [f"{text}</prompt>" for text in self.replies(seed, n)]
