"""One OpenAI-compatible server: its client, its served model's identity, echoed completions, clear errors.

The API key is read from the environment variable the settings name, only here, only when the client is
built; it is never stored on a setting or result and is cut out of every error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from pmpo.errors import PmpoError

if TYPE_CHECKING:
    from pmpo.models import ModelSettings


class RemoteError(PmpoError):
    """The scoring server is unreachable, refuses us, or cannot score prompts; the message says which."""


@dataclass(frozen=True)
class RemoteSettings:
    """Where the server is and how hard to push it (never the key itself: the variable that holds it)."""

    base_url: str  # e.g. http://localhost:8000/v1
    model: str | None = None  # the served model's name; None: the one model the server lists
    api_key_env: str | None = None  # environment variable holding the key; None: the server needs none
    revision: str | None = None  # pins the weights in cache keys: a server can swap them behind one name
    # 30 s covers a batch of long prompts on a busy CPU server; the client retries timeouts with backoff.
    timeout_s: float = 60.0
    max_retries: int = 3  # retries of 429, 5xx, timeouts and dropped connections, with exponential backoff
    # Requests in flight at once: servers batch concurrent requests (vLLM, SGLang); one at a time would
    # leave them idle between replies. 4 keeps a single-process server (llama.cpp) queue short.
    max_concurrency: int = 4
    # Texts per request; the self-check drops this to 1 for a server that takes one prompt per request.
    prompts_per_request: int = 16
    # The self-check costs one request per server and process; off only for a server checked by other means.
    check: bool = True
    # Begin every text with the tokenizer's BOS token. llama-cpp-python's echoed log-probs are aligned only after
    # a leading BOS (which it drops from the echo); without one each token gets the next position's value.
    prepend_bos: bool = False

    @classmethod
    def of(cls, model: "ModelSettings") -> "RemoteSettings":
        """The remote part of a model's settings (backend openai)."""
        if not model.base_url:
            raise RemoteError("model.base_url is required for backend openai (e.g. http://localhost:8000/v1)")
        return cls(
            base_url=model.base_url,
            model=model.model,
            api_key_env=model.api_key_env,
            revision=model.revision,
            timeout_s=model.timeout_s,
            max_retries=model.max_retries,
            max_concurrency=model.max_concurrency,
            check=model.check,
            prepend_bos=model.prepend_bos,
        )


@dataclass(frozen=True)
class Generated:
    """The replies to one generation request, and the tokens the server says it read and wrote (None: unsaid)."""

    texts: tuple[str, ...]
    prompt_tokens: int | None
    completion_tokens: int | None


class Endpoint:
    """A connected client for one server and served model."""

    def __init__(self, settings: RemoteSettings):
        import openai

        self.settings = settings
        self._key = _api_key(settings.api_key_env)
        self._client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=self._key or "EMPTY",  # the client insists on one; keyless servers ignore it
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
        self._served: str | None = None

    def served_model(self) -> str:
        """The model id the server reports for our model name (asked once)."""
        if self._served is None:
            listed = [m.id for m in self._call(lambda: list(self._client.models.list()), "/models")]
            wanted = self.settings.model
            if wanted is None:
                if len(listed) != 1:
                    raise RemoteError(f"{self._where()} serves {_names(listed)}: set model.model to the one to score")
                wanted = listed[0]
            elif wanted not in listed:
                raise RemoteError(f"{self._where()} does not serve a model named {wanted!r}; it serves {_names(listed)}")
            self._served = wanted
        return self._served

    def identity(self) -> str:
        """What cache keys hold: base URL, the served model id, and the revision the user pinned (if any)."""
        bos = "+bos" if self.settings.prepend_bos else ""  # the model then reads a BOS the text lacked
        return f"openai:{self.settings.base_url.rstrip('/')}#{self.served_model()}@{self.settings.revision or 'unpinned'}{bos}"

    def complete(self, texts: Sequence[str], *, retry: bool = True) -> list[dict[str, Any]]:
        """The echoed choices (as dicts) of `texts` sent in one request, in the order of `texts`."""
        from pmpo.remote.logprobs import choices_in_order

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

        from pmpo.remote.logprobs import choices_in_order

        reply = self._call(
            lambda: self._client.completions.create(
                model=self.served_model(), prompt=list(texts), echo=False, max_tokens=max_tokens, temperature=0.0,
                stop=list(stop) if stop else openai.NOT_GIVEN,
            ),
            "/completions",
        )  # fmt: skip
        choices = choices_in_order([c.model_dump() for c in reply.choices], len(texts))
        usage = reply.usage
        return Generated(
            texts=tuple(c.get("text") or "" for c in choices),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    def _call(self, request, path: str):
        import openai

        try:
            return request()
        except openai.APITimeoutError:
            raise RemoteError(
                f"{self._where()}{path} did not answer within {self.settings.timeout_s:g} s "
                f"({self.settings.max_retries} retries): raise model.timeout_s or lower model.max_concurrency"
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise RemoteError(
                f"cannot reach the scoring server at {self.settings.base_url} ({self._redact(str(cause)) or type(cause).__name__}): "
                "is it running, and is model.base_url right?"
            ) from None
        except openai.AuthenticationError as exc:
            raise RemoteError(f"{self._where()} refused the API key {self._key_source()} (HTTP {exc.status_code})") from None
        except openai.NotFoundError as exc:
            raise RemoteError(
                f"{self._where()} has no {path} endpoint (HTTP 404: {self._message(exc)}). pmpo scores with prompt "
                "log-probabilities from /v1/completions; a chat-only endpoint cannot return them"
            ) from None
        except openai.APIStatusError as exc:
            raise RemoteError(f"{self._where()}{path} failed: HTTP {exc.status_code}: {self._message(exc)}{_hint(exc)}") from None

    def _message(self, exc: Exception) -> str:
        body = getattr(exc, "body", None)
        text = body.get("message") or body.get("detail") if isinstance(body, dict) else None
        return self._redact(" ".join(str(text or exc).split()))[:300]

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _where(self) -> str:
        return f"the scoring server at {self.settings.base_url}"

    def _key_source(self) -> str:
        env = self.settings.api_key_env
        return f"from ${env}" if env else "(none set: name the variable that holds it in model.api_key_env)"


def _api_key(env: str | None) -> str | None:
    """The key in environment variable `env`; a clear error when it is named but not set."""
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise RemoteError(f"model.api_key_env names the environment variable {env}, which is not set (or empty)")
    return key


def _names(listed: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in listed) if listed else "no models"


def _hint(exc: Exception) -> str:
    if "logits_all" in str(getattr(exc, "body", "")) + str(exc):
        return " (llama.cpp returns prompt log-probabilities only when started with --logits_all true)"
    return ""
