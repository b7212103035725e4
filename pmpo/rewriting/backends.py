"""The rewriter: the model that writes rewrite variants and marks prompt units, apart from the scored model.

A `Rewriter` answers one user message with n sampled replies. `LocalRewriter` is an in-process model (by
default the scored model itself, as the paper does); `ChatRewriter` is any OpenAI-compatible
`/v1/chat/completions` endpoint (a bigger local server, a hosted API). Selection never depends on the
rewriter: it only proposes, and the scorer's loss decides.

A chat endpoint is reached through `pmpo.remote.connection` (shared with the remote scorer): its API key is read from the
environment variable the settings name, once, when the client is built; it is kept only inside the HTTP client and
never in settings, identities, results or messages.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

from pmpo.errors import PmpoError
from pmpo.models.generation import sample
from pmpo.models.loading import LoadedModel
from pmpo.models.usage import Usage
from pmpo.remote.connection import Connection, Speaker, pick_model, served_identity
from pmpo.rewriting.settings import Backend, RewriterSettings  # noqa: F401 (their home; re-exported here)
from pmpo.text.rendering import chat_request

log = logging.getLogger(__name__)
# Sampled replies that all repeat, this many or more, are taken as a greedy server (fewer repeat by chance).
_SAME_REPLIES = 3


class RewriterError(PmpoError):
    """A rewriter endpoint cannot be used: unreachable, wrong model name, missing or refused key."""


CHAT = Speaker("the rewriter", "rewriter", RewriterError, not_found=": is rewriter.base_url the API root (…/v1)?")
# `rewriter: same` with a served scored model: its own server rewrites, and the fields to fix are the model's.
SERVED_SAME = Speaker(
    "the scored model's server (rewriting for itself: rewriter.backend same)",
    "model",
    RewriterError,
    not_found=": it serves no chat endpoint; name one that does in a rewriter: block (backend openai)",
)


class Rewriter(Protocol):
    """Something that writes replies to rewrite requests."""

    identity: str  # what produced the replies: in cache keys and the MLflow record
    n_params: int | None  # None: unknown (a remote model); size-driven choices then treat it as large
    usage: Usage

    def reply(
        self,
        message: str,
        *,
        n: int,
        temperature: float,
        top_p: float,
        seed: int,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """n sampled replies to one user message; one that ended at a `stop` string ends with it, a cut-off one never."""
        ...


class LocalRewriter:
    """A model loaded in this process; the rewrite step may also use its tokenizer and raw text continuation."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.identity = lm.identity
        self.n_params: int | None = lm.n_params
        self.usage = lm.usage  # one model, one set of counters, whichever step ran it

    def reply(
        self,
        message: str,
        *,
        n: int,
        temperature: float,
        top_p: float,
        seed: int,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """n sampled replies to `message` as a user turn in the model's chat template."""
        text = chat_request(self.lm.tokenizer, message)
        return sample(
            self.lm, text, n, seed=seed, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop
        )


def as_rewriter(rewriter: Rewriter | LoadedModel) -> Rewriter:
    """A loaded model as its own rewriter (the paper's default); a rewriter unchanged."""
    return LocalRewriter(rewriter) if isinstance(rewriter, LoadedModel) else rewriter


def local_model(rewriter: Rewriter) -> LoadedModel | None:
    """The in-process model behind `rewriter`, or None for a remote one.

    The in-process path can continue raw text (the SHORT form as a completion), stop at strings and budget
    tokens against the model's context; a chat endpoint offers none of that.
    """
    return rewriter.lm if isinstance(rewriter, LocalRewriter) else None


class ChatRewriter:
    """An OpenAI-compatible /v1/chat/completions endpoint as the rewriter."""

    def __init__(self, settings: RewriterSettings, identity: str, connection: Connection):
        self.settings, self.identity, self._connection = settings, identity, connection
        self.n_params = settings.n_params
        self.usage = Usage()
        self._warned_greedy = False

    @classmethod
    def connect(cls, settings: RewriterSettings, speaker: Speaker = CHAT) -> ChatRewriter:
        """Build the client (reading the key now) and check that the server serves `settings.model`."""
        connection = Connection(settings, speaker)
        return cls(settings, chat_identity(settings, connection.served(), speaker), connection)

    def reply(
        self,
        message: str,
        *,
        n: int,
        temperature: float,
        top_p: float,
        seed: int,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """n sampled replies; servers that ignore `n` get one request per missing reply, each with its own seed."""
        replies: list[str] = []
        while len(replies) < n:
            # A server that ignored n and returned one choice would return the same one again for the same
            # seed: each further request gets the next seed.
            batch = self._create(message, n - len(replies), temperature, top_p, seed + len(replies), max_tokens, stop)
            if not batch:
                raise RewriterError(f"{self._connection.speaker.name} at {self.settings.base_url} returned no choices")
            replies.extend(batch)
        self._warn_if_greedy(replies[:n], temperature)
        return replies[:n]

    def _warn_if_greedy(self, replies: list[str], temperature: float) -> None:
        """Say once when sampled replies all repeat: the server decodes greedily, so n variants are one.

        `transformers serve` samples only when the model's own generation_config sets do_sample (SmolLM2's does
        not): temperature, top_p and seed then change nothing, and repeats are dropped as duplicates.
        """
        if self._warned_greedy or temperature <= 0 or len(replies) < _SAME_REPLIES or len(set(replies)) > 1:
            return
        self._warned_greedy = True
        log.warning(
            "%s at %s returned %d identical replies at temperature %g: it seems to decode "
            "greedily, so each request yields one variant (transformers serve samples only when the model's "
            "generation_config sets do_sample)",
            self._connection.speaker.name,
            self.settings.base_url,
            len(replies),
            temperature,
        )

    def _create(
        self, message: str, n: int, temperature: float, top_p: float, seed: int, max_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        s = self.settings
        extra = {"stop": list(stop)} if stop else {}  # saves the server generating past the end of the answer

        def create() -> Any:
            return self._connection.client.chat.completions.create(
                model=s.model,
                messages=[{"role": "user", "content": message}],
                n=n,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                max_tokens=max_tokens,
                **extra,
            )

        response = self._connection.call(create, "/chat/completions")
        if response.usage is not None:  # servers that leave it out cost an unknown amount; counted as none
            self.usage.generated(response.usage.completion_tokens or 0, 0, response.usage.prompt_tokens or 0)
        return [_with_stop(c.message.content or "", c.finish_reason, stop) for c in response.choices]


def _with_stop(text: str, finish_reason: str | None, stop: Sequence[str]) -> str:
    """The reply as the in-process path gives it: ending with the stop string it ended at.

    OpenAI's API leaves the stop string out (some servers keep it). Without it a reply that closed its
    </prompt> would read as cut off. A reply that ended its turn (also finish_reason "stop") gets it too: it
    ended on its own, not for lack of tokens, which only "length" says.
    """
    ended = any(text.endswith(s) or (s.strip() and text.rstrip().endswith(s.strip())) for s in stop)
    if not stop or finish_reason != "stop" or ended:
        return text
    return text + stop[0]


def chat_identity(settings: RewriterSettings, served: list[str], speaker: Speaker = CHAT) -> str:
    """The served model's identity (pmpo.remote.connection.served_identity, as when it scores); an error when the
    model is not served."""
    model = pick_model(served, settings.model, speaker, settings.base_url)
    return served_identity(settings.base_url, model, settings.revision)
