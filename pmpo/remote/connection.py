"""One OpenAI-compatible server as pmpo talks to it: its API key, its client, the models it serves, one-line errors.

The scorer's completions server (`pmpo.remote`) and the chat rewriter (`pmpo.rewriting.backends`) both reach servers this
way; what differs between them (who speaks in a message, the config block that names the fields to fix, what a
missing endpoint means) is a `Speaker`. The API key is read from the environment variable the settings name,
once, when the client is built; it stays inside the client and is cut out of every message made here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeVar

from pmpo.errors import PmpoError

T = TypeVar("T")
_MAX_DETAIL = 300  # a server's error body can be a page of HTML; one line of it says enough
_MAX_NAMES = 5  # hosted APIs list dozens of models: the first few show the naming scheme


class ServerSettings(Protocol):
    """The settings fields a connection reads (ModelSettings and RewriterSettings both have them)."""

    base_url: str
    model: str | None
    api_key_env: str | None
    timeout_s: float
    max_retries: int


@dataclass(frozen=True)
class Speaker:
    """Who an error message is about, and what differs between the servers pmpo talks to."""

    name: str  # "the scoring server": the message says "<name> at <base_url> ..."
    block: str  # the config block whose fields the messages name: "model", "rewriter"
    error: type[PmpoError]  # what callers catch
    not_found: str = ""  # said after an HTTP 404 for an endpoint: what its absence means here
    slow: str = ""  # said after a timeout: a fix besides raising <block>.timeout_s
    hints: tuple[tuple[str, str], ...] = ()  # (text in an error reply, what to say about it)


def read_key(env: str | None, field: str, error: type[PmpoError] = PmpoError) -> str | None:
    """The API key in environment variable `env` (None: no key); a one-line error naming `field` and `env`."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise error(f"{field}: the environment variable {env} is not set (or empty); it should hold the API key")
    return key


def make_client(settings: ServerSettings, key: str | None) -> Any:
    """An `openai.OpenAI` client for `settings`; retries 408/409/429, 5xx and dropped connections with backoff."""
    import openai  # only the remote paths need it

    return openai.OpenAI(
        base_url=settings.base_url,
        api_key=key or "EMPTY",  # the client insists on one; a server that wants none ignores it
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


class Connection:
    """A client for one server, whose calls fail with one line from `speaker.error`, never holding the key."""

    def __init__(self, settings: ServerSettings, speaker: Speaker):
        self.settings, self.speaker = settings, speaker
        self._key = read_key(settings.api_key_env, f"{speaker.block}.api_key_env", speaker.error)
        self.client = make_client(settings, self._key)

    def call(self, request: Callable[[], T], path: str) -> T:
        """`request()`, its client errors turned into one `speaker.error` line about `path` (e.g. "/models")."""
        import openai

        try:
            return request()
        except openai.OpenAIError as exc:
            raise self.speaker.error(error_message(exc, self.speaker, self.settings, self._key, path)) from None

    def served(self) -> list[str]:
        """The model ids the server lists at /models."""
        return self.call(lambda: [m.id for m in self.client.models.list()], "/models")

    def served_model(self, wanted: str | None) -> str:
        """`wanted` if the server serves it; None: the one model it serves. A one-line error otherwise."""
        return pick_model(self.served(), wanted, self.speaker, self.settings.base_url)


def served_identity(base_url: str, model_id: str, revision: str | None) -> str:
    """`openai:<base_url>#<model id as the server reports it>@<revision or "unpinned">`: a served model's one
    identity, whether it scores or rewrites (cache keys, run keys and the MLflow record hold it)."""
    return f"openai:{base_url.rstrip('/')}#{model_id}@{revision or 'unpinned'}"


def pick_model(listed: Sequence[str], wanted: str | None, speaker: Speaker, base_url: str) -> str:
    """`wanted` when `listed` holds it; None: the only model listed; else a one-line error naming what is served."""
    where, field = f"{speaker.name} at {base_url}", f"{speaker.block}.model"
    if wanted is None:
        if len(listed) != 1:
            raise speaker.error(f"{field}: {where} serves {_names(listed)}: set {field} to the one to use")
        return listed[0]
    if wanted not in listed:
        raise speaker.error(f"{field}: {where} does not serve a model named {wanted!r}; it serves {_names(listed)}")
    return wanted


def error_message(exc: Exception, speaker: Speaker, settings: ServerSettings, key: str | None, path: str) -> str:
    """One line saying what an openai client error means for this server and which setting to fix; no key in it."""
    import openai

    where, block = f"{speaker.name} at {settings.base_url}", speaker.block
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return (
            f"{where}{path} did not answer within {settings.timeout_s:g} s ({settings.max_retries} retries): "
            f"raise {block}.timeout_s{speaker.slow}"
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        said = scrub(" ".join(str(cause).split()), key)[:_MAX_DETAIL] or type(cause).__name__
        return f"cannot reach {where} ({said}): is it running, and is {block}.base_url right?"
    if isinstance(exc, openai.AuthenticationError):  # hosted APIs echo part of a wrong key: say none of the body
        env = settings.api_key_env
        source = f"from ${env}" if env else f"(none set: name the variable that holds it in {block}.api_key_env)"
        return f"{where} refused the API key {source} (HTTP {exc.status_code})"
    if not isinstance(exc, openai.APIStatusError):
        return f"{where}{path} failed: {type(exc).__name__}: {detail(exc, key)}"
    said = detail(exc, key)
    if exc.status_code in (400, 404) and settings.model and settings.model in said:
        return f"{block}.model: {where} does not serve {settings.model!r}: {said}"
    if exc.status_code == 404:
        return f"{where} has no {path} endpoint (HTTP 404: {said}){speaker.not_found}"
    hints = "".join(hint for needle, hint in speaker.hints if needle in str(exc.body) + str(exc))
    return f"{where}{path} failed: HTTP {exc.status_code}: {said}{hints}"


def detail(exc: Exception, key: str | None) -> str:
    """What the server said, on one line, without the key, clipped (after scrubbing: a cut key would survive)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("detail") or body.get("error") or body
    text = str(body) if body is not None else (getattr(exc, "message", None) or str(exc))
    return scrub(" ".join(text.split()), key)[:_MAX_DETAIL]


def scrub(text: str, key: str | None) -> str:
    """`text` with every occurrence of `key` replaced by ***."""
    return text.replace(key, "***") if key else text


def _names(listed: Sequence[str]) -> str:
    if not listed:
        return "no models"
    return ", ".join(repr(n) for n in listed[:_MAX_NAMES]) + (" ..." if len(listed) > _MAX_NAMES else "")
