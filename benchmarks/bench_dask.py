"""Loss evaluation on a Dask cluster: 2 workers x 1 thread against 1 worker x 1 thread, and the Dask path's
orchestration overhead against the in-process loss task (1 torch thread), measured in one run.

Each figure is one loss step of the optimize flow (`PrefectSteps.losses`: cached task runs, results persisted)
over the same candidates x examples, with the bundled model. Start-up is in no figure, as in an optimisation's
later iterations: each cluster starts, loads the model on every worker and runs one small loss step before it
is timed, and the in-process path does the same. Nothing comes
from a cache: each measurement writes to a fresh result store, and its prompts carry a tag of the same length
that no other measurement uses (the scorer's per-process memo would otherwise answer). The three paths take turns
(`--repeats`) and the median counts, so load from other programs spreads over all three. The load average is
printed with the figures: on a shared machine the ratios mean little without it.

    python benchmarks/bench_dask.py                                   # 13 candidates x 50 examples
    python benchmarks/bench_dask.py --candidates 4 --examples 12      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import workload


def main() -> None:
    """Time the three paths and print the figures (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=13, help="prompts per loss step (PMPO: 1 + k*n = 13)")
    parser.add_argument("--examples", type=int, default=50, help="training examples (PMPO caps them at 50)")
    parser.add_argument("--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh")
    parser.add_argument("--bbh-dir", type=Path, default=workload.BBH_DIR, help="where the BIG-bench samples are")
    # bfloat16: the fast CPU path; auto would pick by a speed probe, which a loaded machine can tip either way.
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--repeats", type=int, default=1, help="turns of the three paths (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pmpo-bench-dask-"))
    os.environ["PMPO_HOME"] = str(root / "home")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

    import torch
    from prefect import flow

    import tasks  # noqa: F401  (first: the offline defaults, before prefect loads)
    from flows.cluster import loss_fan_out
    from flows.config import TaskRunnerConfig
    from flows.steps import PrefectSteps
    from pmpo.data.examples import Dataset
    from pmpo.loop.optimizer import OptimizerConfig
    from pmpo.models.loading import ModelSettings
    from tasks.models import loaded, model_ref

    workload.BBH_DIR = args.bbh_dir
    work = workload.build(args.task, args.candidates, args.examples)
    train = Dataset(name=args.task, examples=work.train, description=work.description)
    ref = model_ref(ModelSettings(dtype=args.dtype))
    counter = iter(range(10**6))

    def step(fan_out, n_prompts: int | None = None, n_examples: int | None = None) -> float:
        """Seconds of one loss step over freshly tagged prompts into a fresh store."""
        n = next(counter)
        os.environ["PMPO_RESULTS_DIR"] = str(root / f"results-{n}")
        prompts = [f"[{n:04d}] {p}" for p in work.zero_shot[:n_prompts]]
        data = train if n_examples is None else train.subset(list(range(n_examples)))
        steps = PrefectSteps(ref, OptimizerConfig(), fan_out=fan_out)
        start = time.perf_counter()
        steps.losses(prompts, data, 0)
        elapsed = time.perf_counter() - start
        assert not any(r.cached for r in steps.work.runs), "a measurement came from the cache"
        return elapsed

    @flow(name="bench-dask")
    def bench() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"in_process": [], "dask_1x1": [], "dask_2x1": []}
        torch.set_num_threads(1)  # the in-process path on one thread, as one worker
        loaded(ref)
        with (
            loss_fan_out(TaskRunnerConfig(kind="dask", n_workers=1)) as one,
            loss_fan_out(TaskRunnerConfig(kind="dask", n_workers=2)) as two,
        ):
            for fan_out in (one, two):
                fan_out.workers()  # start the cluster
                fan_out.runner.client.run(_preload, ref)  # and load the model on every worker
            for fan_out in (None, one, two):  # a first task run in a process sets up Prefect's engine there
                step(fan_out, n_prompts=2, n_examples=2)
            for _ in range(args.repeats):
                times["in_process"].append(step(None))
                times["dask_1x1"].append(step(one))
                times["dask_2x1"].append(step(two))
        return times

    times = bench()
    median = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "workload": f"{len(work.zero_shot)} candidates x {len(work.train)} examples ({work.source})",
        "model": ref.identity,
        "dtype": ref.dtype,
        "seconds": median,
        "all_seconds": times,
        "speedup_2_workers_vs_1": median["dask_1x1"] / median["dask_2x1"],
        "dask_overhead_vs_in_process": median["dask_1x1"] / median["in_process"] - 1,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    print(f"workload: {figures['workload']}; model {ref.identity} ({ref.dtype}); repeats {args.repeats}")
    for name, seconds in median.items():
        print(f"  {name:<11} {seconds:8.2f} s")
    print(f"2 workers x 1 thread vs 1 worker x 1 thread: {figures['speedup_2_workers_vs_1']:.2f}x (target >= 1.7x)")
    print(
        f"Dask path overhead vs in-process, one worker: {figures['dask_overhead_vs_in_process']:+.1%} (target <= 10%)"
    )
    load = ", ".join(f"{x:.2f}" for x in figures["load_average_after"])
    print(f"load average (1, 5, 15 min) after the run: {load} on {figures['cpu_count']} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _preload(ref) -> int:
    """On a worker: load the model (kept for the worker's life); the count of loads so far."""
    from tasks.models import load_count, loaded

    loaded(ref)
    return load_count()


if __name__ == "__main__":
    main()
