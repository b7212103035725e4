"""Loss evaluation on a Dask cluster (prefect-dask): the `task_runner:` block turned into a task runner, and the
fan-out of one loss step into one task run per shard of prompts.

Each shard is the same cached `loss` task over fewer prompts, so a shard's result is keyed, stored and reused as
any loss result is. A worker process keeps the model it loaded (tasks.models caches per process), so the model is
loaded once per worker, not once per shard. The flow's own task runner is left alone: the runner is entered inside
the flow body, so the flow gets it however it was started (the CLI, the nightly refresh, a deployment run).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from distributed.diagnostics.plugin import WorkerPlugin
from prefect.futures import PrefectFuture
from prefect.tasks import Task
from prefect_dask import DaskTaskRunner

from flows.config import TaskRunnerConfig
from pmpo.models.usage import UsageSnapshot
from tasks.models import ModelRef
from tasks.models import usage as model_usage


class TorchThreads(WorkerPlugin):
    """Sets torch's thread count to the worker's thread count (Dask's nanny starts workers with OMP_NUM_THREADS=1)."""

    name = "pmpo-torch-threads"

    def setup(self, worker: Any) -> None:
        """Runs once in each worker process, before its first task."""
        import torch

        torch.set_num_threads(max(1, worker.state.nthreads))


def dask_runner(config: TaskRunnerConfig) -> DaskTaskRunner | None:
    """A DaskTaskRunner for the block (not started); None for kind local."""
    if config.kind == "local":
        return None
    if config.address is not None:
        return DaskTaskRunner(address=config.address)
    # processes: torch holds the GIL too often for threads to compute in parallel; no dashboard: no port to take.
    cluster = {
        "n_workers": config.n_workers,
        "threads_per_worker": config.threads_per_worker,
        "processes": True,
        "dashboard_address": None,
        "env": {"PREFECT_API_URL": api_url()},
    }
    return DaskTaskRunner(cluster_kwargs=cluster)


def api_url() -> str:
    """The Prefect API this process uses, its temporary one included.

    A worker told nothing would start a temporary API of its own (a server process per worker, sharing one SQLite
    file) and record its task runs there, out of the flow run's sight.
    """
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


class LossFanOut:
    """Submits a loss step to a started DaskTaskRunner as one task run per shard of prompts (shards = workers)."""

    def __init__(self, runner: DaskTaskRunner):
        self.runner = runner
        self._workers: int | None = None
        self._usage = UsageSnapshot()  # the workers' last reported work: what usage() says once the cluster is gone
        self.closed = False

    def workers(self) -> int:
        """The cluster's worker count; the first call connects (or starts the local cluster) and sets torch threads."""
        if self._workers is None:
            client = self.runner.client
            client.register_plugin(TorchThreads())
            self._workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        return self._workers

    def shards(self, prompts: Sequence[str]) -> list[list[str]]:
        """`prompts` in contiguous shards of near-equal size, one per worker (fewer when there are fewer prompts)."""
        return shard(list(prompts), self.workers())

    def submit(self, task: Task, **parameters: Any) -> PrefectFuture:
        """One task run on the cluster."""
        return self.runner.submit(task, parameters)

    def usage(self, ref: ModelRef) -> UsageSnapshot:
        """The work `ref`'s model did on the workers so far (so the run's cost counts the shards' forward passes).

        Summed over the workers alive now: on a cluster shared with other runs it counts their work too.
        """
        if self._workers is not None and not self.closed:
            self._usage = sum(self.runner.client.run(model_usage, ref).values(), UsageSnapshot())
        return self._usage


def shard(items: list[str], n: int) -> list[list[str]]:
    """`items` in min(n, len) contiguous runs whose sizes differ by at most one, in order."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


@contextmanager
def loss_fan_out(config: TaskRunnerConfig) -> Iterator[LossFanOut | None]:
    """The fan-out for the block while the block runs (None for kind local); a local cluster stops at its end."""
    runner = dask_runner(config)
    if runner is None:
        yield None
        return
    with runner:  # the cluster starts on the first submit: a fully cached run never starts one
        fan_out = LossFanOut(runner)
        try:
            yield fan_out
        finally:
            fan_out.closed = True  # usage() keeps its last figure: the meter after the loop reads it
