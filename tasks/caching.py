"""Cache policies of pmpo's tasks: what goes into a key, and what must never.

A key = the task's source + the task's inputs by *content*: a model by its identity (`ModelRef.cache_key`),
a dataset by its fingerprint, prompts by their text, settings by their values. Never the model object
(it does not hash stably and would tie the cache to one process) and never the inputs listed in `exclude`
(labels that only name a task run). The pmpo version is in the key too, so an upgrade does not reuse
results a changed method computed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from pmpo.data.examples import Dataset
from tasks.environment import results_dir
from tasks.models import ModelRef


def _pmpo_version() -> str:
    try:
        return importlib.metadata.version("pmpo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def content(value: Any) -> Any:
    """A JSON-able stand-in for `value` that is equal exactly when the value's content is."""
    if isinstance(value, ModelRef):
        return {"model": value.cache_key()}
    if isinstance(value, Dataset):
        return {"dataset": value.fingerprint}
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
    raise TypeError(f"no content key for a {type(value).__name__}: add it to tasks.caching.content")


@dataclass
class ContentInputs(CachePolicy):
    """Key on the task's inputs by content (see module doc), leaving out the `exclude` names."""

    exclude: list[str] = field(default_factory=list)

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        """Hash of the content of the inputs and the pmpo version."""
        kept = {name: content(value) for name, value in (inputs or {}).items() if name not in self.exclude}
        return hash_objects({"inputs": kept, "pmpo": _pmpo_version()}, raise_on_failure=True)


def policy(*exclude: str) -> CachePolicy:
    """Task source + inputs by content, without the named inputs."""
    return TASK_SOURCE + ContentInputs(exclude=list(exclude))


def result_storage() -> Path:
    """Task results on disk under the data directory ($PMPO_HOME/results), read when a flow starts."""
    path = results_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
