"""Cache policies of pmpo's tasks, and the result store they persist to.

What goes into a key, and what must never, is tasks.identity's (`task_key`): inputs by content, pmpo's version
and source. A policy here is Prefect's: the task's source plus that key, less the inputs named in `exclude`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import Task
from prefect.cache_policies import TASK_SOURCE, CachePolicy

from tasks.identity import task_key
from tasks.store import result_store


@dataclass
class ContentInputs(CachePolicy):
    """Key on the task's inputs by content (tasks.identity), leaving out the `exclude` names."""

    exclude: list[str] = field(default_factory=list)

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        """Hash of the content of the inputs, the pmpo version and pmpo's source (tasks.identity.task_key)."""
        return task_key(inputs or {}, self.exclude)


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
