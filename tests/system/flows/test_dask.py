"""Loss evaluation on a Dask cluster (the `task_runner:` block) and the shared result store.

The cluster path must change where losses are computed and nothing else: the same candidates, losses and pick as
the in-process path, the same MLflow run key, each worker loading the model once. The store must let two
processes that reach the same evaluation at once compute it once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import support
from flows.cluster import shard
from flows.config import ConfigError, OptimizeConfig, TaskRunnerConfig, build
from support.pipeline import forget_process_scores, tiny_config


def test_shards_are_contiguous_near_equal_and_in_order():
    items = [str(i) for i in range(13)]
    parts = shard(items, 2)
    assert parts == [items[:7], items[7:]]
    assert [len(p) for p in shard(items, 4)] == [4, 3, 3, 3]
    assert sum(shard(items, 4), []) == items
    assert shard(items[:2], 5) == [["0"], ["1"]]  # never an empty shard


def test_task_runner_block_checks_its_fields():
    assert OptimizeConfig().task_runner.kind == "local"  # the embedded path stays the default
    assert build(TaskRunnerConfig, {"kind": "dask", "address": "local"}).address is None
    assert build(TaskRunnerConfig, {"kind": "dask", "address": "tcp://10.0.0.5:8786"}).address == "tcp://10.0.0.5:8786"
    with pytest.raises(ConfigError, match="address: '10.0.0.5:8786' is not a Dask scheduler address"):
        build(TaskRunnerConfig, {"kind": "dask", "address": "10.0.0.5:8786"})
    with pytest.raises(ConfigError, match="an address needs kind: dask"):
        build(TaskRunnerConfig, {"address": "tcp://h:1"})
    with pytest.raises(ConfigError, match="task_runner.n_workers"):
        build(OptimizeConfig, {"task_runner": {"kind": "dask", "n_workers": 0}})


def test_cli_flags_fill_the_block():
    from pmpo_cli.commands import _task_runner_flags
    from pmpo_cli.main import build_parser

    args = build_parser().parse_args(["optimize", "--dask", "tcp://sched:8786"])
    assert _task_runner_flags(args) == {"task_runner": {"kind": "dask", "address": "tcp://sched:8786"}}
    args = build_parser().parse_args(["optimize", "--dask-workers", "3"])
    assert _task_runner_flags(args) == {"task_runner": {"kind": "dask", "n_workers": 3}}
    assert _task_runner_flags(build_parser().parse_args(["optimize"])) == {}


def test_run_key_ignores_where_losses_are_computed(tiny_model_dir):
    from pmpo.data import load_dataset
    from tasks.identity import run_key
    from tasks.models import model_ref

    local, dask = tiny_config(tiny_model_dir), tiny_config(tiny_model_dir, task_runner={"kind": "dask"})
    ref, data = model_ref(local.model), load_dataset("builtin:sentiment", limit=40)
    assert run_key(local, ref, data) == run_key(dask, ref, data)  # a run resumes on either path
    assert run_key(local, ref, data) != run_key(tiny_config(tiny_model_dir, seed=1), ref, data)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-thread worker processes, reached by address as a remote one would be."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c,
        Client(c) as client,
    ):
        yield c, client


@pytest.mark.usefixtures("prefect_harness")
def test_flow_on_dask_gives_the_in_process_candidates(tmp_path, monkeypatch, tiny_model_dir, cluster):
    from flows.optimize import optimize_prompt

    c, client = cluster
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summaries = {}
    for name, runner in (("local", {}), ("dask", {"kind": "dask", "address": c.scheduler_address})):
        monkeypatch.setenv("PMPO_HOME", str(tmp_path / name))
        forget_process_scores()  # the workers start with no memo: so must this process, for equal costs
        config = tiny_config(
            tiny_model_dir, iterations=3, task_runner=runner, eval={"max_examples": 2, "generate": False}
        )
        summaries[name] = optimize_prompt(config)
    local, dask = summaries["local"], summaries["dask"]

    assert [(r.id, r.parent_id, r.origin, r.selected) for r in dask.candidates] == [
        (r.id, r.parent_id, r.origin, r.selected) for r in local.candidates
    ]
    assert [r.loss for r in dask.candidates] == [r.loss for r in local.candidates]  # identical, not just close
    assert dask.best_prompt == local.best_prompt and len(dask.candidates) > 2
    # the candidates of an iteration went out in 2 shards, one per worker; each worker loaded the model once
    shards = dask.work.loss_computed_by_iteration
    assert max(shards.values()) == 2 and max(local.work.loss_computed_by_iteration.values()) == 1
    from tasks.models import load_count

    assert sorted(client.run(load_count).values()) == [1, 1]
    # the run's cost counts the workers' forward passes (the initial scoring: no memo differs between the paths)
    local_loss, dask_loss = (s.cost.initial.steps["loss"] for s in (local, dask))
    assert dask_loss.forward_passes == local_loss.forward_passes > 0
    assert dask_loss.tokens_scored == local_loss.tokens_scored


@pytest.mark.real_model
@pytest.mark.usefixtures("prefect_harness")
def test_sharded_losses_equal_sequential_ones_with_the_real_model(pmpo_home, real_lm):
    """SmolLM2 (fp32) on a flow-started local cluster: the joined shards equal the one in-process loss task."""
    import torch
    from prefect import flow

    from flows.cluster import loss_fan_out
    from flows.steps import PrefectSteps
    from pmpo.data import load_dataset
    from pmpo.loop.optimizer import OptimizerConfig
    from pmpo.models.loading import ModelSettings
    from tasks.models import model_ref

    ref = model_ref(ModelSettings(dtype="float32"))
    data = load_dataset("builtin:sentiment", limit=4)
    prompts = [
        "Classify the review.",
        "Is this review positive or negative? One word.",
        "Answer: positive or negative.",
    ]

    @flow
    def both():
        # fp32 sums come out in another order on another thread count (1e-6 apart): score as the workers do
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sequential = PrefectSteps(ref, OptimizerConfig()).losses(prompts, data, 0)
        finally:
            torch.set_num_threads(threads)
        with loss_fan_out(TaskRunnerConfig(kind="dask", n_workers=2)) as fan_out:
            steps = PrefectSteps(ref, OptimizerConfig(), fan_out=fan_out)
            return sequential, steps.losses(prompts, data, 0), steps.work

    sequential, sharded, work = both()
    assert [r.label for r in work.runs] == ["loss iter=0 2x4", "loss iter=0 1x4"]
    assert not any(r.cached for r in work.runs)  # shards are their own cache entries, computed on the workers
    for field in ("loss", "nll", "tokens"):
        np.testing.assert_array_equal(getattr(sharded, field), getattr(sequential, field))
    assert sharded.prompt_loss()[1] < sharded.prompt_loss()[0]  # real signal: the precise instruction helps


@pytest.mark.usefixtures("prefect_harness")
def test_url_result_store_caches_and_stays_safe(tmp_path, monkeypatch, tiny_model_dir):
    """An fsspec URL as the store: memory:// here (s3://, gcs://... take the same path through fsspec)."""
    import pickle

    import fsspec

    from pmpo.data import load_dataset
    from pmpo.models.loading import ModelSettings
    from tasks import steps as t
    from tasks.caching import with_storage
    from tasks.models import model_ref

    monkeypatch.setenv("PMPO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PMPO_RESULTS_DIR", f"memory://pmpo-test-{tmp_path.name}/results")
    memory = fsspec.filesystem("memory")
    ref = model_ref(ModelSettings(spec=str(tiny_model_dir), dtype="float32"))
    data = load_dataset("builtin:sentiment", limit=6)

    def run():
        state = with_storage(t.loss_matrix)(model=ref, prompts=["Say it."], data=data, iteration=0, return_state=True)
        return state.name, state.result()

    first, again = run(), run()
    assert (first[0], again[0]) == ("Completed", "Cached")
    np.testing.assert_array_equal(first[1].loss, again[1].loss)
    (record,) = memory.ls(f"/pmpo-test-{tmp_path.name}/results/records", detail=False)
    assert len(memory.ls(f"/pmpo-test-{tmp_path.name}/results/values", detail=False)) == 1
    memory.pipe(record, pickle.dumps({"planted": True}))  # a foreign record is a cache miss, never unpickled
    assert run()[0] == "Completed"


def test_two_processes_sharing_the_store_compute_an_evaluation_once(tmp_path, tiny_model_dir):
    """Both reach the same loss task at the same moment; one computes, the other waits and reads its result."""
    worker = Path(support.__file__).with_name("store_worker.py")
    barrier, outs = tmp_path / "go", [tmp_path / f"out{i}.json" for i in (1, 2)]
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update(PMPO_HOME=str(tmp_path / "home"), PMPO_RESULTS_DIR=str(tmp_path / "shared-store"), HF_HUB_OFFLINE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tiny_model_dir), str(barrier), str(out)],
            env={**env, "PREFECT_HOME": str(tmp_path / f"prefect{i}")},
            stderr=subprocess.PIPE,
        )
        for i, out in enumerate(outs)
    ]
    deadline = time.monotonic() + 300
    while not all(Path(f"{o}.ready").exists() for o in outs):
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the processes never reached the barrier"
        time.sleep(0.1)
    barrier.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
        p.stderr.close()

    runs = sorted((json.loads(o.read_text()) for o in outs), key=lambda r: r["state"])
    assert [r["state"] for r in runs] == ["Cached", "Completed"]  # computed once
    cached, computed = runs
    assert cached["go"] < computed["end"]  # it asked while the other was computing: it waited, it did not arrive late


def test_killed_dask_run_resumes_without_duplicates_or_recomputation(tmp_path, tiny_model_dir, monkeypatch):
    """test_resume's check on the cluster path: SIGKILL the CLI (and its local cluster) after iteration 1 is
    recorded, run the same command again: the same MLflow run, each candidate once, no finished shard recomputed."""
    import yaml

    from support.killing import cli_env, command, kill_after_first_iteration, recorded_iterations
    from support.pipeline import tiny_values

    iterations = 3
    config = tmp_path / "run.yaml"
    values = tiny_values(tiny_model_dir, iterations=iterations, task_runner={"kind": "dask", "n_workers": 2})
    config.write_text(yaml.safe_dump({**values, "eval": {"max_examples": 2, "generate": False}}))
    env = cli_env(tmp_path)
    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    kill_after_first_iteration(config, tmp_path / "first.json", env, queries, timeout_s=600)
    done_before_kill = sorted(set(recorded_iterations(queries)))
    if done_before_kill[-1] >= iterations:
        pytest.skip("the machine was too slow to kill the run before it ended")  # pragma: no cover

    rerun = subprocess.run(
        command(config, tmp_path / "second.json"), env=env, capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((tmp_path / "second.json").read_text())
    assert summary["resumed"] and [r["run_id"] for r in queries.list_runs()] == [summary["run_id"]]
    ids = [r["id"] for r in queries.run_candidates(summary["run_id"])]
    assert len(ids) == len(set(ids)) == summary["n_candidates"]
    assert [s for s, _ in queries.metric_history(summary["run_id"], "incumbent_loss")] == list(range(iterations + 1))
    computed = {int(k): v for k, v in summary["work"]["loss_computed_by_iteration"].items()}
    assert all(computed[i] == 0 for i in done_before_kill), computed  # every shard of those came from the store
