"""Our client of one OpenAI-compatible server's `/v1/completions`: the served model's identity, echoed
completions and greedy continuations, clear errors.

The API key, the client and the one-line errors come from `pmpo.remote.connection`, shared with the chat rewriter: the key
is never stored on a setting or result and is cut out of every error message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from pmpo.errors import PmpoError
from pmpo.remote.connection import Connection, Speaker, served_identity
from pmpo.remote.logprobs import choices_in_order

if TYPE_CHECKING:
    from pmpo.models.settings import ModelSettings


class RemoteError(PmpoError):
    """The scoring server is unreachable, refuses us, or cannot score prompts; the message says which."""


SCORER = Speaker(
    "the scoring server",
    "model",
    RemoteError,
    not_found=(
        ". pmpo scores with prompt log-probabilities from /v1/completions; a chat-only endpoint cannot return them"
    ),
    slow=" or lower model.max_concurrency",
    hints=(
        ("logits_all", " (llama.cpp returns prompt log-probabilities only when started with --logits_all true)"),
        # llama.cpp's own llama-server refuses echo outright (ggml-org/llama.cpp#27174)
        ("no echo", " (this server cannot echo the prompt's log-probabilities: score with one that can, e.g. vLLM)"),
    ),
)


@dataclass(frozen=True)
class Generated:
    """The replies to one generation request, and the tokens the server says it read and wrote (None: unsaid)."""

    texts: tuple[str, ...]
    prompt_tokens: int | None
    completion_tokens: int | None


class CompletionsClient:
    """A connected client for one server's `/v1/completions` and one served model."""

    def __init__(self, settings: ModelSettings):
        if not settings.base_url:
            raise RemoteError("model.base_url is required for backend openai (e.g. http://localhost:8000/v1)")
        self.settings = settings
        self._connection = Connection(settings, SCORER)
        self._client = self._connection.client
        self._served: str | None = None

    def served_model(self) -> str:
        """The model id the server reports for our model name (asked once)."""
        if self._served is None:
            self._served = self._connection.served_model(self.settings.model)
        return self._served

    def identity(self) -> str:
        """Base URL, the served model id, and the revision the user pinned (pmpo.remote.connection.served_identity);
        `prepend_bos` changes the texts sent, not the model: a cache key holds it beside the identity."""
        return served_identity(self.settings.base_url, self.served_model(), self.settings.revision)

    def complete(self, texts: Sequence[str], *, retry: bool = True) -> list[dict[str, Any]]:
        """The echoed choices (as dicts) of `texts` sent in one request, in the order of `texts`."""
        client = self._client if retry else self._client.with_options(max_retries=0)
        # max_tokens 1, not 0: llama-cpp-python reads 0 as "until the context is full"; the one generated
        # token lies past the prompt's characters and is never counted.
        reply = self._call(
            lambda: client.completions.create(
                model=self.served_model(), prompt=list(texts), echo=True, logprobs=1, max_tokens=1, temperature=0.0
            ),
            "/completions",
        )
        return [dict(c) for c in choices_in_order([c.model_dump() for c in reply.choices], len(texts))]

    def generate(self, texts: Sequence[str], *, max_tokens: int, stop: Sequence[str] = ()) -> Generated:
        """Greedy continuations (not echoed) of `texts` sent in one request, in the order of `texts`."""
        import openai

        reply = self._call(
            lambda: self._client.completions.create(
                model=self.served_model(),
                prompt=list(texts),
                echo=False,
                max_tokens=max_tokens,
                temperature=0.0,
                stop=list(stop) if stop else openai.NOT_GIVEN,
            ),
            "/completions",
        )
        choices = choices_in_order([c.model_dump() for c in reply.choices], len(texts))
        usage = reply.usage
        return Generated(
            texts=tuple(c.get("text") or "" for c in choices),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    def _call(self, request, path: str):
        return self._connection.call(request, path)
