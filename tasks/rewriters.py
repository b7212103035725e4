"""A process-wide rewriter cache, as tasks.models is for scored models: each rewriter is built once per process.

Cache keys use a `RewriterRef` (tasks.identity builds the key): which rewriter writes the rewrites (its identity),
never the client or the model object, and never an API key (the settings name only the variable that holds it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pmpo.models.settings import ModelSettings
from pmpo.models.usage import UsageSnapshot
from pmpo.remote.connection import Speaker
from pmpo.rewriting.backends import CHAT, SERVED_SAME, ChatRewriter, LocalRewriter, Rewriter
from pmpo.rewriting.settings import RewriterSettings
from tasks.models import ModelRef, completions_client, loaded, model_ref
from tasks.models import usage as model_usage

_LOCK = threading.Lock()
_CHAT: dict[RewriterSettings, ChatRewriter] = {}


@dataclass(frozen=True)
class RewriterRef:
    """What a task needs to get the rewriter, and what its results depend on."""

    backend: str  # same | local | openai
    identity: str  # in process: the model's identity; served: base URL + served model id + revision
    model: ModelRef | None = None  # same / local: the in-process model
    chat: RewriterSettings | None = None  # openai: how to reach it (no key)


def same_as(model: ModelRef, n_params: int | None = None) -> RewriterRef:
    """The scored model as its own rewriter (the paper's default).

    A served model rewrites through its own server's /v1/chat/completions: the weights live there, and a local
    copy of a 7B-70B model (what `spec`/`tokenizer` name) is exactly what a team serving it does not want loaded
    here. `n_params`: its size, for the template choice (unknown counts as large).
    """
    if model.settings.backend != "openai":
        return RewriterRef("same", model.identity, model=model)
    s = model.settings
    chat = RewriterSettings(
        backend="openai",
        base_url=s.base_url,
        model=completions_client(s).served_model(),
        api_key_env=s.api_key_env,
        timeout_s=s.timeout_s,
        max_retries=s.max_retries,
        n_params=n_params,
        revision=s.revision,
    )
    return RewriterRef("same", _chat(chat, SERVED_SAME).identity, chat=chat)


def rewriter_ref(settings: RewriterSettings, model: ModelRef) -> RewriterRef:
    """The rewriter the `rewriter:` block names: the scored `model`, another in-process model, or a chat endpoint."""
    if settings.backend == "local":
        return local_ref(settings)
    if settings.backend == "openai":
        return chat_ref(settings)
    return same_as(model, settings.n_params)


def local_ref(settings: RewriterSettings) -> RewriterRef:
    """Another in-process model as the rewriter (backend local), resolved without loading it."""
    assert settings.spec is not None  # RewriterSettings checks it for backend local
    local = ModelSettings(spec=settings.spec, dtype=settings.dtype, device=settings.device, revision=settings.revision)
    model = model_ref(local)
    return RewriterRef("local", model.identity, model=model)


def chat_ref(settings: RewriterSettings) -> RewriterRef:
    """A chat endpoint as the rewriter: connects once to read the model id the server reports (and checks key,
    server and model name now, before a run exists)."""
    return RewriterRef("openai", _chat(settings).identity, chat=settings)


def rewriter(ref: RewriterRef) -> Rewriter:
    """The process's rewriter for `ref` (a local model loads on first use)."""
    if ref.model is not None:
        return LocalRewriter(loaded(ref.model))
    assert ref.chat is not None
    return _chat(ref.chat, SERVED_SAME if ref.backend == "same" else CHAT)


def usage(ref: RewriterRef, scored: ModelRef) -> UsageSnapshot:
    """The work the rewriter did in this process (zeros when it is the `scored` model: counted there already)."""
    if ref.model is not None and ref.model.settings == scored.settings:
        return UsageSnapshot()
    if ref.model is not None:
        return model_usage(ref.model)
    with _LOCK:
        client = _CHAT.get(ref.chat)
    return client.usage.snapshot() if client is not None else UsageSnapshot()


def _chat(settings: RewriterSettings, speaker: Speaker = CHAT) -> ChatRewriter:
    with _LOCK:
        if settings not in _CHAT:
            _CHAT[settings] = ChatRewriter.connect(settings, speaker)
        return _CHAT[settings]
