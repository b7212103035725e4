"""Faults on the distributed path, injected for real (marked `server`): PostgreSQL under a Prefect server and an
MLflow server, a process work pool with workers, and the nightly refresh fanned out on it. One set of servers
serves every case (module fixture); each case uses its own prompts (so its own MLflow experiments).

What each case checks is what a user needs: no candidate lost or recorded twice, no prompt promoted on data that
did not finish, every decision naming what happened, and the next refresh resuming from the task cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_deployments import _HTTP, PREFECT_YAML, ROOT, _env, _free_port, _get_json, _post_json, _prefect, _running
from test_scale import _tiny

from testkit.pgserver import Postgres, binaries, postgres_server

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (.ci/run installs it)"),
]

AUTOMATION = ROOT / "deployments" / "crashed-runs.yaml"


@dataclass
class Stack:
    """The servers every case shares."""

    tmp: Path
    api: str
    mlflow_url: str
    env: dict[str, str]
    pg: Postgres
    mlflow_argv: list[str]
    mlflow: subprocess.Popen | None = None

    def start_mlflow(self) -> None:
        """(Re)start the MLflow server on its port; return when it answers."""
        with open(self.tmp / "mlflow.log", "ab") as log:
            self.mlflow = subprocess.Popen(
                self.mlflow_argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _until(lambda: _HTTP.open(f"{self.mlflow_url}/health", timeout=5).status == 200, "the MLflow server", 300)

    def kill_mlflow(self) -> None:
        """SIGKILL the MLflow server and its workers."""
        if self.mlflow is None or self.mlflow.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.mlflow.pid, signal.SIGKILL)
        self.mlflow.wait(30)


def _until(ready, what: str, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            found = ready()
            if found:
                return found
        time.sleep(poll)
    pytest.fail(f"{what}: not within {timeout} s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from deployments.postgres import ensure_databases

    tmp = tmp_path_factory.mktemp("faults")
    with contextlib.ExitStack() as stop:
        pg = stop.enter_context(postgres_server())
        stores = ensure_databases(pg.url.replace("/postgres", "/faults"))
        port, mlflow_port = _free_port(), _free_port()
        api, mlflow_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{mlflow_port}"
        env = _env(tmp, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=mlflow_url)
        server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        prefect_env = {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": stores.prefect}
        stop.enter_context(_running(server, prefect_env, tmp / "prefect.log"))
        mlflow = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        mlflow += ["--workers", "1", "--backend-store-uri", stores.mlflow, "--artifacts-destination", str(tmp / "art")]
        s = Stack(tmp, api, mlflow_url, env, pg, mlflow)
        stop.callback(s.kill_mlflow)
        s.start_mlflow()
        _until(lambda: _get_json(f"{api}/health") is True, "the Prefect server", 300)
        _prefect(["work-pool", "create", "pmpo", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env)
        # As shipped (90 s): a shorter window marked a live child Crashed when a loaded machine delayed its heartbeat.
        _prefect(["automation", "create", "--from-file", str(AUTOMATION)], env)
        yield s


def _worker(s: Stack, name: str):
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "pmpo", "--name", name, "--limit", "1"]
    return _running(argv, s.env, s.tmp / f"{name}.log", cwd=s.tmp)


@contextlib.contextmanager
def _full_store(s: Stack, room: int):
    """The result store on a filesystem of its own with `room` bytes (a tmpfs mounted over it): a write past that
    fails with ENOSPC and leaves its file cut short, while nothing else is short of space (Prefect's own files in
    /tmp, MLflow's temporary artifacts, as on a machine whose store is a disk of its own). Yields what frees space."""
    store = s.tmp / "home" / "results"
    store.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(store)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"a small filesystem for the store cannot be mounted here: {mount.stderr.decode().strip()}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
    finally:
        subprocess.run(["umount", "--lazy", str(store)], check=False)


def _prompts(s: Stack, tiny_model_dir: Path, *names: str) -> Path:
    path = s.tmp / f"{'-'.join(names)}.yaml"
    # a seed of its own per name: each prompt is its own optimisation, sharing no cached step with another case
    entries = [{"name": n, "optimize": _tiny(tiny_model_dir, seed=zlib.crc32(n.encode()) % 10_000)} for n in names]
    path.write_text(yaml.safe_dump({"promotion": {"margin": 0.0}, "prompts": entries}))
    return path


def _nightly(s: Stack, prompts: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "pmpo_cli.main", "nightly", "--config", str(prompts), "--output", str(out)]
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed with the process)
    env = {**(env or s.env), "PYTHONUNBUFFERED": "1"}  # its log is read while it runs
    p = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _STARTED.append(p)
    return p


def _children(s: Stack, name: str) -> list[dict]:
    """The optimize flow runs the refreshes started for prompt `name`."""
    return _post_json(f"{s.api}/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"nightly {name}"]}}})


def _running_child(s: Stack, name: str, cached: bool = False) -> dict:
    """Wait until prompt `name`'s child runs (and, with `cached`, has put its first losses in the task cache)."""

    def ready():
        for run in _children(s, name):
            if run["state_type"] == "RUNNING":
                if not cached:
                    return run
                # Not "loss iter=0" COMPLETED: Prefect sets a task's state before its transaction writes the
                # result, and a kill in between leaves nothing cached. The next task starts after that write.
                after = {"flow_run_id": {"any_": [run["id"]]}, "name": {"like_": "mask iter=1"}}
                if _post_json(f"{s.api}/task_runs/filter", {"task_runs": after}):
                    return run
        return None

    return _until(ready, f"a running flow run of {name}", 300, poll=0.5)


def _cached_tasks(s: Stack, flow_run_id: str) -> int:
    body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}, "state": {"name": {"any_": ["Cached"]}}}}
    return len(_post_json(f"{s.api}/task_runs/filter", body))


def _kill_flow_run(flow_run_id: str) -> int:
    """SIGKILL every process running the flow run (a worker starts it with PREFECT__FLOW_RUN_ID in its environment)."""
    killed = 0
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                proc.name.isdigit()
                and f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in (proc / "environ").read_bytes()
            ):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def _finish(p: subprocess.Popen, timeout: float = 420) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise


def _decisions(out: Path) -> dict[str, dict]:
    return {d["name"]: d for d in json.loads(out.read_text())["decisions"]}


def _record(s: Stack, *experiments: str) -> tuple[int, int]:
    """(candidates lost, candidates recorded twice) in the experiments' MLflow runs, counted by content."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=s.mlflow_url)
    lost = twice = 0
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        seen: Counter = Counter()
        for run in runs:
            if run.info.status != "FINISHED":
                continue
            path = client.download_artifacts(run.info.run_id, "candidates.json", str(s.tmp / run.info.run_id))
            table = json.loads(Path(path).read_text())
            rows = [dict(zip(table["columns"], row)) for row in table["data"]]
            lost += int(run.data.metrics.get("n_candidates_total", len(rows))) - len(rows)
            # content, not ids: the same prompt made the same way from the same start is the same candidate
            seen.update((run.data.tags.get("pmpo.run_key"), r["origin"], r["iteration"], r["prompt"]) for r in rows)
        twice += sum(n - 1 for n in seen.values())
    return lost, twice


_TABLE: list[dict] = []  # one row per fault injected: the figures docs/operations.md shows
_STARTED: list[subprocess.Popen] = []  # refreshes this module started: none outlives it


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    """Print the figures once every case has run (`pytest -s` shows them)."""
    yield
    for p in _STARTED:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    print("\n| fault | injected | survived | candidates lost | recorded twice | wrong promotions |")
    print("|---|---|---|---|---|---|")
    for row in _TABLE:
        print(f"| {row['fault']} | 1 | {row['survived']} | {row['lost']} | {row['twice']} | {row['wrong']} |")


def _fault(name: str) -> dict:
    row = {"fault": name, "survived": 0, "lost": "?", "twice": "?", "wrong": "?"}
    _TABLE.append(row)
    return row


def _account(s: Stack, row: dict, experiments: tuple[str, ...], *outs: Path) -> None:
    """What the fault cost: candidates lost or recorded twice, promotions of a child that did not end well."""
    wrong = 0
    for out in outs:
        for d in _decisions(out).values():
            assert d["reason"], d  # every decision names what happened
            if d["outcome"] == "promoted":
                wrong += _get_json(f"{s.api}/flow_runs/{d['flow_run_id']}")["state_type"] != "COMPLETED"
    lost, twice = _record(s, *experiments)
    row.update(lost=lost, twice=twice, wrong=wrong)
    assert (lost, twice, wrong) == (0, 0, 0), row


def _one_line(log: Path) -> None:
    """A refresh that failed said why in one line of error, with no traceback."""
    text = log.read_text()
    assert len([line for line in text.splitlines() if line.startswith("pmpo: error:")]) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_a_worker_killed_mid_child_crashes_that_prompt_only_and_the_next_refresh_resumes(stack, tiny_model_dir):
    row = _fault("worker SIGKILLed (with its child) mid-run")
    prompts = _prompts(stack, tiny_model_dir, "alpha", "beta")
    with _worker(stack, "w1") as w1, _worker(stack, "w2") as w2:
        refresh = _nightly(stack, prompts, stack.tmp / "worker-1.json")
        alpha = _running_child(stack, "alpha", cached=True)  # some of its work is in the task cache
        # both workers may log that they try to submit it: only the one that won says it started it
        ran = "Flow run 'nightly alpha' submitted to infrastructure"
        [worker] = [w for w, n in ((w1, "w1"), (w2, "w2")) if ran in (stack.tmp / f"{n}.log").read_text()]
        os.killpg(worker.pid, signal.SIGKILL)  # the worker dies, as its machine would: nobody reports the run
        _kill_flow_run(alpha["id"])  # with its flow run, wherever it sits
        assert _finish(refresh) == 1  # one prompt failed: named, not hidden
    _one_line(stack.tmp / "worker-1.log")
    first = _decisions(stack.tmp / "worker-1.json")
    assert first["alpha"]["outcome"] == "failed" and "ended Crashed" in first["alpha"]["reason"], first
    assert alpha["id"] in first["alpha"]["reason"] and "no heartbeat" in first["alpha"]["reason"]
    assert first["beta"]["outcome"] in ("promoted", "kept"), first  # the other prompt went on

    with _worker(stack, "w3"):  # alpha alone: beta's run is not what this checks
        assert _finish(_nightly(stack, _prompts(stack, tiny_model_dir, "alpha"), stack.tmp / "worker-2.json")) == 0
    second = _decisions(stack.tmp / "worker-2.json")
    assert second["alpha"]["outcome"] in ("promoted", "kept"), second
    assert _cached_tasks(stack, second["alpha"]["flow_run_id"]) >= 1  # resumed from the cache, not from zero
    _account(stack, row, ("alpha", "beta"), stack.tmp / "worker-1.json", stack.tmp / "worker-2.json")
    row["survived"] = 1


def test_a_refresh_killed_while_it_waits_leaves_one_copy_of_each_child(stack, tiny_model_dir):
    row = _fault("refresh SIGKILLed while it waits")
    prompts = _prompts(stack, tiny_model_dir, "gamma")
    # No worker until the second refresh waits: its child cannot end in between, however fast the machine.
    killed = _nightly(stack, prompts, stack.tmp / "killed.json")
    [child] = _until(lambda: _children(stack, "gamma"), "the refresh's child", 300)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    again = _nightly(stack, prompts, stack.tmp / "again.json")
    _until(lambda: "waiting for the unfinished flow run" in (stack.tmp / "again.log").read_text(), "adoption", 300)
    with _worker(stack, "w4"):
        assert _finish(again) == 0, (stack.tmp / "again.log").read_text()[-3000:]
    assert [r["id"] for r in _children(stack, "gamma")] == [child["id"]]  # no second copy was started
    decisions = _decisions(stack.tmp / "again.json")
    assert decisions["gamma"]["flow_run_id"] == child["id"] and decisions["gamma"]["outcome"] in ("promoted", "kept")
    _account(stack, row, ("gamma",), stack.tmp / "again.json")
    row["survived"] = 1


def _survives_or_resumes(stack: Stack, row: dict, name: str, outs: list[Path], refresh: subprocess.Popen) -> None:
    """The refresh under a fault either ends well, or fails in bounded time with one line and the next resumes."""
    prompts = stack.tmp / f"{name}.yaml"  # as _prompts wrote it
    code = _finish(refresh, timeout=420)  # bounded: a hang fails the case
    row["fault"] += f" (refresh exit {code})"
    if code != 0:
        _one_line(outs[0].with_suffix(".log"))
        if outs[0].exists():  # the refresh decided: the prompt whose child failed says so
            assert _decisions(outs[0])[name]["outcome"] == "failed", _decisions(outs[0])
        # else the refresh's own calls failed before it decided (allowed: one line, then the next one resumes)
        with _worker(stack, f"{name}-again"):
            assert _finish(_nightly(stack, prompts, outs[1])) == 0, outs[1].with_suffix(".log").read_text()[-3000:]
        child = _decisions(outs[1])[name]["flow_run_id"]
        adopted = "waiting for the unfinished flow run" in outs[1].with_suffix(".log").read_text()
        assert adopted or _cached_tasks(stack, child) >= 1  # not from zero: the child still running, or the cache
    last = outs[0] if code == 0 else outs[1]
    assert _decisions(last)[name]["outcome"] in ("promoted", "kept"), _decisions(last)
    _account(stack, row, (name,), *(o for o in outs if o.exists()))
    row["survived"] = 1


def test_postgresql_restarting_mid_refresh(stack, tiny_model_dir):
    row = _fault("PostgreSQL restarted mid-refresh")
    prompts = _prompts(stack, tiny_model_dir, "delta")
    with _worker(stack, "w5"):
        refresh = _nightly(stack, prompts, stack.tmp / "pg-1.json")
        _running_child(stack, "delta", cached=True)
        stack.pg.restart()
        _survives_or_resumes(stack, row, "delta", [stack.tmp / "pg-1.json", stack.tmp / "pg-2.json"], refresh)


def test_mlflow_restarting_mid_run(stack, tiny_model_dir):
    row = _fault("MLflow server restarted mid-run")
    prompts = _prompts(stack, tiny_model_dir, "epsilon")
    with _worker(stack, "w6"):
        refresh = _nightly(stack, prompts, stack.tmp / "ml-1.json")
        _running_child(stack, "epsilon", cached=True)
        stack.kill_mlflow()
        stack.start_mlflow()
        _survives_or_resumes(stack, row, "epsilon", [stack.tmp / "ml-1.json", stack.tmp / "ml-2.json"], refresh)


# The store alone is full (a tmpfs over it; a file-size limit on the whole worker killed Prefect's own workspace
# supervisor, which writes the run's manifest to /tmp, before any pmpo code ran). Prefect 3.9 only logs a result it
# cannot write, so pmpo probes the store after each computed step (tasks.store.check_writable).
def test_a_full_result_store_fails_the_prompt_naming_the_store_and_nothing_half_written_is_reused(
    stack, tiny_model_dir
):
    prompts = _prompts(stack, tiny_model_dir, "zeta")
    store = stack.tmp / "home" / "results"
    # 4 pages: room for the first few results (each file takes a page), not for the whole run
    with _full_store(stack, room=16 * 1024) as free_space:
        row = _fault("result store full mid-run")
        with _worker(stack, "w7"):
            assert _finish(_nightly(stack, prompts, stack.tmp / "full-1.json")) == 1
        _one_line(stack.tmp / "full-1.log")
        failed = _decisions(stack.tmp / "full-1.json")["zeta"]
        assert failed["outcome"] == "failed", failed
        assert f"result store {store}" in failed["reason"], failed  # names the store
        assert "ended Failed" in failed["reason"], failed  # the child failed by name, not crashed
        # Whether a file was left cut short depends on which write met the full disk: that such a file is a cache
        # miss, never a result, is tests/unit/tasks/test_serialization.py's; here the next run must simply be right.

        free_space()
        with _worker(stack, "w8"):
            assert _finish(_nightly(stack, prompts, stack.tmp / "full-2.json")) == 0
    decisions = _decisions(stack.tmp / "full-2.json")
    assert decisions["zeta"]["outcome"] in ("promoted", "kept"), decisions
    assert _cached_tasks(stack, decisions["zeta"]["flow_run_id"]) >= 1  # what was written whole is reused
    _account(stack, row, ("zeta",), stack.tmp / "full-1.json", stack.tmp / "full-2.json")
    row["survived"] = 1
