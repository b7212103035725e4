"""Every run identity and cache key pmpo builds, in one place, and what goes into each.

A model's identity comes from pmpo, where the model is resolved: `<name>@sha256:<content hash>` for a checkpoint
directory or the bundled model, the hub id and revision for a hub model (pmpo.models.loading.resolve_checkpoint),
and `openai:<base_url>#<served model id>@<revision|unpinned>` for a model behind a server
(pmpo.remote.connection.served_identity): one format whether the served model scores or rewrites, so the record
and every key name it alike. What is built from identities is here:

- `model_key(ref)`: a scored model in a cache key: identity, dtype, device, placement, scorer settings; a served
  model also the identity of the tokenizer that renders its texts and, when set, `prepend_bos` (it changes the
  texts sent, not the model). Never the spec string (where the model lives) or the model object.
- `rewriter_key(ref)`: who writes the rewrites: its identity; an in-process rewriter also its dtype and device.
  Never a client or an API key.
- `content(value)`: any task input as JSON-able content, equal exactly when the content is: a model and a
  rewriter as above, a dataset by its fingerprint and description (shown to the rewriter), settings by their
  values, prompts by their text.
- `task_key(inputs, exclude)`: a task's cache key: its inputs by content less `exclude` (labels that only name a
  task run), pmpo's version and `source_fingerprint()` (a changed template or loss never reuses old results;
  the version alone does not change in a checkout). tasks.caching adds the task's own source.
- `record_tags(model, rewriter, dataset, train)`: the same identities as an optimisation run's MLflow tags
  (`pmpo.model_identity`, `pmpo.rewriter_identity`, the dataset's and the training split's fingerprints).
- `config_hash(config, exclude)`: a stable digest of a config's values, less `exclude`.
- `run_key(config, model, dataset, rewriter)`: how a rerun finds the MLflow run it continues: the config's hash
  less `RUN_NEUTRAL`, the model's identity and dtype, the dataset's fingerprint, and the rewriter's identity
  unless the scored model rewrites (runs made before other rewriters existed keep their keys).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Iterable

from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

import pmpo
from pmpo.data.examples import Dataset
from tasks.models import ModelRef
from tasks.rewriters import RewriterRef

# Config fields that change no number, so not which run a config continues: where the losses are computed, and
# how much of the run one invocation may do (a larger budget goes on with the same run's cached steps).
RUN_NEUTRAL = frozenset({"task_runner", "budget"})


def model_key(ref: ModelRef) -> dict:
    """The parts of a model reference that change a result (the spec string does not: the identity does)."""
    key = {
        "identity": ref.identity,
        "dtype": ref.dtype,
        "device": ref.device,
        "placement": ref.settings.placement,
        "scorer": ref.scorer.model_dump(),
    }
    if ref.text_identity:  # served: the tokenizer that renders the texts (its chat template changes them)
        key["tokenizer"] = ref.text_identity
    if ref.settings.backend == "openai" and ref.settings.prepend_bos:
        key["prepend_bos"] = True
    return key


def rewriter_key(ref: RewriterRef) -> dict:
    """The parts that change a rewrite: who writes it (same and local alike: the model, dtype and device)."""
    if ref.model is not None:
        return {"identity": ref.identity, "dtype": ref.model.dtype, "device": ref.model.device}
    return {"identity": ref.identity}


def content(value: Any) -> Any:
    """A JSON-able stand-in for `value` that is equal exactly when the value's content is."""
    if isinstance(value, ModelRef):
        return {"model": model_key(value)}
    if isinstance(value, RewriterRef):  # who writes the rewrites, never a client or a key
        return {"rewriter": rewriter_key(value)}
    if isinstance(value, Dataset):
        return {"dataset": value.fingerprint, "description": value.description}
    if isinstance(value, BaseModel):
        return content(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: content(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): content(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(content(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [content(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"no content key for a {type(value).__name__}: add it to tasks.identity.content")


def task_key(inputs: dict[str, Any], exclude: Iterable[str] = ()) -> str:
    """A task's key: the content of its inputs less `exclude`, pmpo's version and pmpo's source."""
    left_out = set(exclude)
    kept = {name: content(value) for name, value in inputs.items() if name not in left_out}
    code = {"version": _pmpo_version(), "source": source_fingerprint()}
    return hash_objects({"inputs": kept, "pmpo": code}, raise_on_failure=True)


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """Hash of every .py file of the pmpo package (paths and contents), computed once per process."""
    root = Path(pmpo.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _pmpo_version() -> str:
    try:
        return importlib.metadata.version("pmpo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def record_tags(model: ModelRef, rewriter: RewriterRef, dataset: Dataset, train: Dataset) -> dict[str, str]:
    """What a run was computed from, as the MLflow record tags it: the identities its cache keys hold."""
    return {
        "pmpo.model_identity": model.identity,
        "pmpo.rewriter_identity": rewriter.identity,
        "pmpo.dataset_fingerprint": dataset.fingerprint,
        "pmpo.train_fingerprint": train.fingerprint,
    }


def config_hash(config: BaseModel, exclude: frozenset[str] = frozenset()) -> str:
    """A stable digest of a config's content, less the `exclude` fields (part of the MLflow run key)."""
    values = config.model_dump(mode="json", exclude=set(exclude) or None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def run_key(config: BaseModel, model: ModelRef, dataset: Dataset, rewriter: RewriterRef | None = None) -> str:
    """Same config, model, rewriter and data -> same key: how a rerun finds the run it continues."""
    text = f"{config_hash(config, RUN_NEUTRAL)}:{model.identity}:{model.dtype}:{dataset.fingerprint}"
    if rewriter is not None and rewriter.backend != "same":  # the scored model's own runs keep their old keys
        text += f":{rewriter.identity}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]
