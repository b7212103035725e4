"""The rewriter: the model that writes rewrite variants and marks prompt units, apart from the scored model.

A `Rewriter` answers one user message with n sampled replies. `LocalRewriter` is an in-process model (by
default the scored model itself, as the paper does); `ChatRewriter` is any OpenAI-compatible
`/v1/chat/completions` endpoint (a bigger local server, a hosted API). Selection never depends on the
rewriter: it only proposes, and the scorer's loss decides.

The API key of a chat endpoint is read from the environment variable the settings name, once, when the client
is built; it is kept only inside the HTTP client and never in settings, identities, results or messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

from pmpo.errors import PmpoError
from pmpo.generation import sample
from pmpo.models import LoadedModel
from pmpo.prompting import chat_request
from pmpo.usage import Usage

Backend = Literal["same", "local", "openai"]


class RewriterError(PmpoError):
    """A rewriter endpoint cannot be used: unreachable, wrong model name, missing or refused key."""


class Rewriter(Protocol):
    """Something that writes replies to rewrite requests."""

    identity: str  # what produced the replies: in cache keys and the MLflow record
    n_params: int | None  # None: unknown (a remote model); size-driven choices then treat it as large
    usage: Usage

    def reply(
        self, message: str, *, n: int, temperature: float, top_p: float, seed: int, max_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """n sampled replies to one user message; a reply that ended at a `stop` string ends with it."""
        ...


class LocalRewriter:
    """A model loaded in this process; the rewrite step may also use its tokenizer and raw text continuation."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.identity = lm.identity
        self.n_params: int | None = lm.n_params
        self.usage = lm.usage  # one model, one set of counters, whichever step ran it

    def reply(
        self, message: str, *, n: int, temperature: float, top_p: float, seed: int, max_tokens: int, stop: Sequence[str] = ()
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


@dataclass(frozen=True)
class ChatSettings:
    """Where a chat endpoint is and how to reach it; never the key itself, only the variable that holds it."""

    base_url: str  # e.g. http://localhost:8000/v1
    model: str  # the served model's name
    api_key_env: str | None = None  # None: the server needs no key
    # Rewrites are a few hundred tokens; a minute covers a busy server, retries cover a blip.
    timeout_s: float = 60.0
    max_retries: int = 3
    n_params: int | None = None  # size hint for the template/units choice; None: treated as large
    revision: str | None = None  # pins the served weights in the identity (a server can swap them by name)


def read_key(api_key_env: str | None, where: str = "rewriter.api_key_env") -> str | None:
    """The API key from the environment; a one-line error naming the variable (never a value) when unset."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise RewriterError(f"{where}: the environment variable {api_key_env} is not set (it should hold the API key)")
    return key


class ChatRewriter:
    """An OpenAI-compatible /v1/chat/completions endpoint as the rewriter."""

    def __init__(self, settings: ChatSettings, identity: str, client: Any, key: str | None = None):
        self.settings, self.identity, self._client, self._key = settings, identity, client, key
        self.n_params = settings.n_params
        self.usage = Usage()

    @classmethod
    def connect(cls, settings: ChatSettings) -> ChatRewriter:
        """Build the client (reading the key now) and check that the server serves `settings.model`."""
        key = read_key(settings.api_key_env)
        client = _client(settings, key)
        served = _call(settings, key, lambda: [m.id for m in client.models.list().data])
        return cls(settings, chat_identity(settings, served), client, key)

    def reply(
        self, message: str, *, n: int, temperature: float, top_p: float, seed: int, max_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """n sampled replies; servers that ignore `n` get one request per missing reply, each with its own seed."""
        replies: list[str] = []
        while len(replies) < n:
            # A server that ignored n and returned one choice would return the same one again for the same
            # seed: each further request gets the next seed.
            batch = self._create(message, n - len(replies), temperature, top_p, seed + len(replies), max_tokens, stop)
            if not batch:
                raise RewriterError(f"the rewriter at {self.settings.base_url} returned no choices")
            replies.extend(batch)
        return replies[:n]

    def _create(
        self, message: str, n: int, temperature: float, top_p: float, seed: int, max_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        s = self.settings
        extra = {"stop": list(stop)} if stop else {}  # saves the server generating past the end of the answer

        def create() -> Any:
            return self._client.chat.completions.create(
                model=s.model, messages=[{"role": "user", "content": message}], n=n, temperature=temperature,
                top_p=top_p, seed=seed, max_tokens=max_tokens, **extra,
            )  # fmt: skip

        response = _call(s, self._key, create)
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


def chat_identity(settings: ChatSettings, served: list[str]) -> str:
    """`openai:<base_url>#<model id as /v1/models reports it>[@revision]`; an error when the model is not served."""
    if settings.model not in served:
        listed = ", ".join(served[:5]) + (" ..." if len(served) > 5 else "") or "none"
        raise RewriterError(f"rewriter.model: {settings.model!r} is not served at {settings.base_url} (it serves: {listed})")
    identity = f"openai:{settings.base_url.rstrip('/')}#{settings.model}"
    return identity + (f"@{settings.revision}" if settings.revision else "")


def _client(settings: ChatSettings, key: str | None) -> Any:
    import openai  # only a chat rewriter needs it

    # The client retries connection errors, 408/409/429 and 5xx with exponential backoff. A server that
    # wants no key still gets a placeholder: the client refuses to start without one.
    return openai.OpenAI(
        base_url=settings.base_url, api_key=key or "unused", timeout=settings.timeout_s, max_retries=settings.max_retries
    )


def _call(settings: ChatSettings, key: str | None, request: Any) -> Any:
    """Run one client call, turning the client's errors into one line that never holds the key."""
    import openai

    where = f"the rewriter at {settings.base_url}"
    try:
        return request()
    except openai.AuthenticationError:  # hosted APIs echo part of a wrong key in the body: say none of it
        raise RewriterError(f"{where} refused the API key in {settings.api_key_env or '(no key set)'} (401)") from None
    except openai.APITimeoutError:
        raise RewriterError(f"{where} did not answer within {settings.timeout_s} s ({settings.max_retries} retries)") from None
    except openai.APIConnectionError:
        raise RewriterError(f"{where} is not reachable: is the server running?") from None
    except openai.APIStatusError as exc:
        detail = _scrub(_detail(exc), key)
        if exc.status_code in (400, 404) and settings.model in detail:
            raise RewriterError(f"rewriter.model: {where} does not serve {settings.model!r}: {detail}") from None
        raise RewriterError(f"{where} answered {exc.status_code}: {detail}") from None


def _detail(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("detail") or body.get("message") or body.get("error") or body
    return " ".join(str(body if body is not None else exc.message).split())[:300]


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text
