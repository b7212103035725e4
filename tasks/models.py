"""A process-wide model cache: each model is loaded once per process, and only when a task must compute.

Cache keys use a `ModelRef` (the model's identity and the settings that change its numbers), which is cheap to
build: a fully cached rerun never loads the model at all.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from pmpo.loss import Scorer, ScorerSettings
from pmpo.models import (
    LoadedModel,
    ModelSettings,
    TextSide,
    load_model,
    load_text_side,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from pmpo.usage import UsageSnapshot
from tasks.progress import Event, report

_LOCK = threading.Lock()  # tasks may run in worker threads; a model must still load only once
_MODELS: dict[ModelSettings, LoadedModel] = {}
_TEXT: dict[ModelSettings, TextSide] = {}
_SCORERS: dict[tuple[ModelSettings, ScorerSettings], Scorer] = {}
_LOADS: list[ModelSettings] = []  # every load this process did, in order (a Dask worker must do each once)


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to get the model, and what its results depend on; never the model object itself."""

    settings: ModelSettings
    scorer: ScorerSettings
    identity: str  # name + content hash or hub revision (pmpo.models.resolve_checkpoint)
    dtype: str  # resolved: "auto" means different numbers on different hardware
    device: str

    def cache_key(self) -> dict:
        """The parts of the reference that change a result (the spec string does not: the identity does)."""
        return {
            "identity": self.identity,
            "dtype": self.dtype,
            "device": self.device,
            "placement": self.settings.placement,
            "scorer": asdict(self.scorer),
        }


def model_ref(settings: ModelSettings, scorer: ScorerSettings = ScorerSettings()) -> ModelRef:
    """Resolve a model's identity without loading it."""
    _, identity = resolve_checkpoint(settings.spec, settings.revision)
    device = resolve_device(settings.device)
    return ModelRef(
        settings=settings,
        scorer=scorer,
        identity=identity,
        dtype=str(resolve_dtype(settings.dtype, device)).removeprefix("torch."),
        device=device.type,
    )


def loaded(ref: ModelRef) -> LoadedModel:
    """The loaded model for `ref`, loading it on first use in this process."""
    with _LOCK:
        if ref.settings not in _MODELS:
            label = f"load model {ref.identity}"
            report(Event("start", label))
            _MODELS[ref.settings] = load_model(ref.settings)
            _LOADS.append(ref.settings)
            report(Event("done", label))
        return _MODELS[ref.settings]


def scorer(ref: ModelRef) -> Scorer:
    """The process's scorer for `ref`: one per model and scorer settings, so its memo is shared by all tasks."""
    lm = loaded(ref)
    with _LOCK:
        key = (ref.settings, ref.scorer)
        if key not in _SCORERS:
            _SCORERS[key] = Scorer(lm, ref.scorer)
        return _SCORERS[key]


def text_side(ref: ModelRef) -> TextSide | LoadedModel:
    """The model's tokenizer, placement and context length, without its weights (loaded once per process)."""
    with _LOCK:
        if ref.settings in _MODELS:  # the loaded model has all of it
            return _MODELS[ref.settings]
        if ref.settings not in _TEXT:
            _TEXT[ref.settings] = load_text_side(ref.settings)
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
    return lm.usage.snapshot() if lm is not None else UsageSnapshot()
