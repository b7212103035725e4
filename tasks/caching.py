"""Cache policies of pmpo's tasks: what goes into a key, and what must never.

A key = the task's source + the task's inputs by *content*: a model by its identity (`ModelRef.cache_key`),
a dataset by its fingerprint, prompts by their text, settings by their values. Never the model object
(it does not hash stably and would tie the cache to one process) and never the inputs listed in `exclude`
(labels that only name a task run). A dataset enters by its fingerprint *and* every other field that reaches a
request (its description, shown to the rewriter). A fingerprint of pmpo's own source is in the key too, so a
changed template or loss never reuses results the old code computed (the version number alone would not change
in a checkout).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

import pmpo
from pmpo.data.examples import Dataset
from tasks.models import ModelRef
from tasks.rewriters import RewriterRef
from tasks.store import result_store


def _pmpo_version() -> str:
    try:
        return importlib.metadata.version("pmpo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """Hash of every .py file of the pmpo package (paths and contents), computed once per process."""
    root = Path(pmpo.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def content(value: Any) -> Any:
    """A JSON-able stand-in for `value` that is equal exactly when the value's content is."""
    if isinstance(value, ModelRef):
        return {"model": value.cache_key()}
    if isinstance(value, RewriterRef):  # who writes the rewrites, never a client or a key
        return {"rewriter": value.cache_key()}
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
    raise TypeError(f"no content key for a {type(value).__name__}: add it to tasks.caching.content")


@dataclass
class ContentInputs(CachePolicy):
    """Key on the task's inputs by content (see module doc), leaving out the `exclude` names."""

    exclude: list[str] = field(default_factory=list)

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        """Hash of the content of the inputs, the pmpo version and pmpo's source."""
        kept = {name: content(value) for name, value in (inputs or {}).items() if name not in self.exclude}
        code = {"version": _pmpo_version(), "source": source_fingerprint()}
        return hash_objects({"inputs": kept, "pmpo": code}, raise_on_failure=True)


def policy(*exclude: str) -> CachePolicy:
    """Task source + inputs by content, without the named inputs."""
    return TASK_SOURCE + ContentInputs(exclude=list(exclude))


def with_storage(task: Task) -> Task:
    """`task` persisting to the result store ($PMPO_RESULTS_DIR or $PMPO_HOME/results, read now; tasks.store),
    with records that are checked, and one computation per key however many processes ask for it at once.

    Records (what a cache key maps to) go to records/, values to values/; the record storage hands Prefect only
    records pmpo's JSON serializer wrote (tasks.serialization): a planted or foreign file is a cache miss, never
    unpickled. SERIALIZABLE: a run takes its key's lock before it looks the key up, so a second process (another
    Dask worker, another machine on the same store) waits and then reads the result instead of computing it.
    """
    store = result_store()
    cache = task.cache_policy.configure(
        key_storage=store.records, isolation_level="SERIALIZABLE", lock_manager=store.locks
    )
    if isinstance(store.values, Path):
        return task.with_options(result_storage=store.values, cache_policy=cache)
    # Prefect takes a URL storage on a task only as a block saved on its API, so that a record can name it by id.
    # Ours never needs that: a record holds the value's URL and SafeRemoteRecordStorage reads it there. An unsaved
    # block also works across Prefect servers (each machine may have its own), which a block id would not.
    configured = task.with_options(cache_policy=cache)
    configured.result_storage = store.values
    return configured
