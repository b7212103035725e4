"""Several processes on one data directory: six first uses of a fresh SQLite store at once all succeed and leave
a whole schema; a run written by a live process cannot be taken over (a clear error names the owner), and once
that process is killed the next identical run resumes it; a prompt text registered again reuses its version."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

CHILD_ENV_DROP = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}


def _env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env.update(PMPO_HOME=str(home), PYTHONPATH=os.getcwd())
    return env


FIRST_USE = textwrap.dedent(
    """
    import sys
    from tasks.mlflow import runs, writes
    run = runs.start_run("concurrent", f"key-{sys.argv[1]}", "r", params={"i": sys.argv[1]}, tags={})
    writes.log_metrics(run, {"best_loss": 1.0}, step=0)
    runs.finish(run)
    """
)


def test_six_first_uses_of_a_fresh_store_at_once_all_succeed(tmp_path, monkeypatch):
    home = tmp_path / "home"
    children = [
        subprocess.Popen([sys.executable, "-c", FIRST_USE, str(i)], env=_env(home), stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    failures = [c.stderr.read()[-1500:] for c in children if c.wait(timeout=600) != 0]
    assert not failures, failures[0]

    tables = {
        r[0] for r in sqlite3.connect(home / "mlflow.db").execute("select name from sqlite_master where type='table'")
    }
    assert not {t for t in tables if t.startswith("_alembic_tmp")} and "alembic_version" in tables
    monkeypatch.setenv("PMPO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    listed = queries.list_runs()  # what `pmpo runs` shows: a healthy store
    assert (
        len(listed) == 6 and {r["status"] for r in listed} == {"FINISHED"} and {r["best_loss"] for r in listed} == {1.0}
    )


HOLDER = textwrap.dedent(
    """
    import time
    from tasks.mlflow import runs, writes
    run = runs.start_run("owned", "the-key", "r", params={}, tags={})
    writes.log_metrics(run, {"incumbent_loss": 2.0}, step=0)
    print(run.run_id, flush=True)
    time.sleep(600)
    """
)


def test_live_run_is_not_taken_over_and_a_killed_one_resumes(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PMPO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import locks, runs

    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=_env(home), stdout=subprocess.PIPE, text=True)
    try:
        run_id = holder.stdout.readline().strip()
        assert run_id, "the holder did not start its run"
        with pytest.raises(locks.RunBusy, match=rf"being written by [^ ]+:{holder.pid} since"):
            runs.start_run("owned", "the-key", "r", params={}, tags={})
        assert runs.run_tags(run_id)[runs.OWNER_TAG].endswith(f":{holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()

    resumed = runs.start_run("owned", "the-key", "r", params={}, tags={})
    assert resumed.run_id == run_id and resumed.resumed and resumed.logged_through == 0
    assert runs.run_tags(run_id)[runs.OWNER_TAG] == locks.owner()
    runs.finish(resumed)
    assert not (home / "locks" / "run-the-key.owner").exists()  # released at finish


def test_same_prompt_text_reuses_its_registry_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import prompts, runs

    made = []
    for key in ("a", "b", "c"):
        made.append(runs.start_run("reg", key, key, params={}, tags={}))
        runs.finish(made[-1])
    name, v1 = prompts.register_prompt("task", "Answer briefly.", 1.5, made[0])
    assert prompts.register_prompt("task", "Answer briefly.", 1.5, made[1]) == (name, v1)
    assert prompts.register_prompt("task", "Answer briefly.", 1.5, made[1]) == (name, v1)  # same run: no repeat
    _, v2 = prompts.register_prompt("task", "Answer in one word.", 1.2, made[2])

    assert prompts.version_numbers(name) == [v1, v2] and v2 == v1 + 1
    tags = prompts.get_version(name, v1).tags
    assert tags[prompts.RUN_IDS_TAG] == f"{made[0].run_id},{made[1].run_id}" and tags["run_id"] == made[0].run_id
    assert prompts.get_version(name, v2).tags[prompts.RUN_IDS_TAG] == made[2].run_id


def test_a_second_claim_in_another_process_fails_until_release(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPO_HOME", str(tmp_path / "home"))
    from tasks.mlflow import locks

    probe = "from tasks.mlflow import locks\ntry:\n    locks.claim_run('k')\n    print('claimed')\nexcept locks.RunBusy as e:\n    print(e)"
    locks.claim_run("k")
    locks.claim_run("k")  # the owner may claim again (a resumed run in the same process)
    busy = subprocess.run([sys.executable, "-c", probe], env=_env(tmp_path / "home"), capture_output=True, text=True)
    assert f"{locks.owner()} since" in busy.stdout
    locks.release_run("k")
    time.sleep(0.1)
    free = subprocess.run([sys.executable, "-c", probe], env=_env(tmp_path / "home"), capture_output=True, text=True)
    assert free.stdout.strip() == "claimed"
