"""A process-wide model cache: each model is loaded once per process, and only when a task must compute.

Cache keys use a `ModelRef` (the model's identity and the settings that change its numbers; tasks.identity
builds the key), which is cheap to build: a fully cached rerun never loads the model at all. A model behind a
server (backend openai) is scored by a `pmpo.remote.RemoteScorer`; its identity is the server's (base URL, served
model id, pinned revision: pmpo.remote.connection.served_identity, the same whether it scores or rewrites).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pmpo.models.loading import (
    LoadedModel,
    TextSide,
    load_model,
    load_text_side,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from pmpo.models.settings import ModelSettings
from pmpo.models.usage import UsageSnapshot
from pmpo.remote import CompletionsClient, RemoteScorer
from pmpo.scoring.loss import BaseScorer, Scorer
from pmpo.scoring.settings import ScorerSettings
from tasks.progress import Event, report

_LOCK = threading.Lock()  # tasks may run in worker threads; a model must still load only once
_MODELS: dict[ModelSettings, LoadedModel] = {}
_TEXT: dict[ModelSettings, TextSide] = {}
_SCORERS: dict[tuple[ModelSettings, ScorerSettings], BaseScorer] = {}
_CLIENTS: dict[ModelSettings, CompletionsClient] = {}
_LOADS: list[ModelSettings] = []  # every load this process did, in order (a Dask worker must do each once)


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to get the model, and what its results depend on; never the model object itself."""

    settings: ModelSettings
    scorer: ScorerSettings
    identity: str  # name + content hash or hub revision (pmpo.models.loading.resolve_checkpoint)
    dtype: str  # resolved: "auto" means different numbers on different hardware ("remote": the server's)
    device: str
    # backend openai: the identity of the tokenizer that renders the texts (its chat template changes them)
    text_identity: str = ""


def model_ref(settings: ModelSettings, scorer: ScorerSettings = ScorerSettings()) -> ModelRef:
    """Resolve a model's identity without loading it (backend openai: asks the server which model it serves)."""
    if settings.backend == "openai":
        _, text_identity = resolve_checkpoint(text_settings(settings).spec)
        return ModelRef(settings, scorer, completions_client(settings).identity(), "remote", "remote", text_identity)
    _, identity = resolve_checkpoint(settings.spec, settings.revision)
    device = resolve_device(settings.device)
    return ModelRef(
        settings=settings,
        scorer=scorer,
        identity=identity,
        dtype=str(resolve_dtype(settings.dtype, device)).removeprefix("torch."),
        device=device.type,
    )


def text_settings(settings: ModelSettings) -> ModelSettings:
    """The local model whose tokenizer renders texts; backend openai: `tokenizer` (else `spec`) loaded here.

    The revision is left out for a remote model: there it labels the server's weights, not a hub commit.
    """
    if settings.backend == "local":
        return settings
    return ModelSettings(
        spec=settings.tokenizer or settings.spec,
        dtype=settings.dtype,
        device=settings.device,
        placement=settings.placement,
    )


def completions_client(settings: ModelSettings) -> CompletionsClient:
    """The process's client for a remote model's server (one per settings; it reads the key once)."""
    with _LOCK:
        if settings not in _CLIENTS:
            _CLIENTS[settings] = CompletionsClient(settings)
        return _CLIENTS[settings]


def loaded(ref: ModelRef) -> LoadedModel:
    """The loaded model for `ref`, loading it on first use in this process.

    Backend openai: a local copy of `tokenizer` (else `spec`). Nothing in a run asks for it (the server scores,
    generates and, by default, rewrites); it is here for Python callers that want the weights anyway.
    """
    with _LOCK:
        if ref.settings not in _MODELS:
            label = f"load model {ref.identity}"
            report(Event("start", label))
            _MODELS[ref.settings] = load_model(text_settings(ref.settings))
            _LOADS.append(ref.settings)
            report(Event("done", label))
        return _MODELS[ref.settings]


def scorer(ref: ModelRef) -> BaseScorer:
    """The process's scorer for `ref`: one per model and scorer settings, so its memo is shared by all tasks.

    Backend openai: a RemoteScorer, which needs the tokenizer only, never the weights.
    """
    remote = ref.settings.backend == "openai"
    lm = text_side(ref) if remote else loaded(ref)
    client = completions_client(ref.settings) if remote else None
    with _LOCK:
        key = (ref.settings, ref.scorer)
        if key not in _SCORERS:
            _SCORERS[key] = RemoteScorer(lm, client, ref.scorer) if client else Scorer(lm, ref.scorer)
        return _SCORERS[key]


def text_side(ref: ModelRef) -> TextSide | LoadedModel:
    """The model's tokenizer, placement and context length, without its weights (loaded once per process)."""
    with _LOCK:
        if ref.settings in _MODELS:  # the loaded model has all of it
            return _MODELS[ref.settings]
        if ref.settings not in _TEXT:
            _TEXT[ref.settings] = load_text_side(text_settings(ref.settings))
        return _TEXT[ref.settings]


def is_loaded(ref: ModelRef) -> bool:
    """True when this process has loaded the model already (tests check that a cached rerun never does)."""
    return ref.settings in _MODELS


def load_count() -> int:
    """How many times this process loaded a model (tests check a Dask worker loads each model once)."""
    with _LOCK:
        return len(_LOADS)


def usage(ref: ModelRef) -> UsageSnapshot:
    """The work `ref`'s model did in this process; zeros while it is not loaded (cached steps compute nothing)."""
    with _LOCK:
        lm = _MODELS.get(ref.settings)
        remote = [
            s.usage.snapshot() for (m, _), s in _SCORERS.items() if m == ref.settings and isinstance(s, RemoteScorer)
        ]
    return sum(remote, lm.usage.snapshot() if lm is not None else UsageSnapshot())
