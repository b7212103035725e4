"""Past one machine, for real (marked `server`): the nightly refresh fans out over a work pool (each prompt a
flow run of `optimize`, the deployment's concurrency limit honoured, a failing prompt isolated, each decision
linking its run), and `pmpo serve --db` keeps both records on a real PostgreSQL server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from test_deployments import (
    PREFECT_YAML,
    ROOT,
    _env,
    _free_port,
    _get_json,
    _post_json,
    _prefect,
    _running,
    _wait_until,
)

from support.pipeline import tiny_values
from testkit.pgserver import binaries, running_postgres

pytestmark = pytest.mark.server


def _tiny(model_dir: Path, **overrides) -> dict:
    return tiny_values(
        model_dir,
        iterations=1,
        rewrite={"k": 1, "n": 1, "max_new_tokens": 8},
        eval={"max_examples": 4, "generate": False},
        **overrides,
    )


def _pmpo(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pmpo_cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_nightly_fans_out_over_a_work_pool_under_the_deployments_concurrency_limit(
    tmp_path, tiny_model_dir, monkeypatch
):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    prompts = tmp_path / "prompts.yaml"
    broken = {"name": "broken", "optimize": _tiny(tiny_model_dir, model={"spec": str(tmp_path / "no-such-model")})}
    prompts.write_text(
        yaml.safe_dump(
            {"promotion": {"margin": 0.0}, "prompts": [{"name": "good", "optimize": _tiny(tiny_model_dir)}, broken]}
        )
    )
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _running(server, env, tmp_path / "server.log") as srv:
        _wait_until(lambda: _get_json(f"{api}/health") is True, "prefect server", 300, srv, tmp_path / "server.log")
        _prefect(["work-pool", "create", "pmpo", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env)
        # One at a time, whatever the workers could take: the server must hold the second child back.
        _prefect(
            [
                "--no-prompt",
                "deploy",
                "--name",
                "optimize",
                "--concurrency-limit",
                "1",
                "--prefect-file",
                str(PREFECT_YAML),
            ],
            env,
        )
        worker = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "pmpo", "--name", "worker-a"]
        with _running(worker, env, tmp_path / "worker.log", cwd=tmp_path):
            done = _pmpo(["nightly", "--config", str(prompts), "--output", str(tmp_path / "out.json")], env, ROOT)
        runs = {r["id"]: r for r in _post_json(f"{api}/flow_runs/filter", {})}
        parents = {
            _get_json(f"{api}/task_runs/{r['parent_task_run_id']}")["flow_run_id"]
            for r in runs.values()
            if r["parent_task_run_id"]
        }

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # one prompt failed: named, not hidden
    decisions = {d["name"]: d for d in json.loads((tmp_path / "out.json").read_text())["decisions"]}
    good, bad = decisions["good"], decisions["broken"]
    assert good["outcome"] in ("promoted", "kept") and bad["outcome"] == "failed"
    assert bad["flow_run_id"] in bad["reason"] and "ended Failed" in bad["reason"]
    children = [runs[good["flow_run_id"]], runs[bad["flow_run_id"]]]
    for child in children:  # each a sub-run of the refresh, run by the pool's worker
        assert child["parent_task_run_id"] is not None and child["work_pool_name"] == "pmpo"
        assert child["deployment_id"] is not None and child["id"] in (tmp_path / "worker.log").read_text()
        assert good["flow_run_url"].endswith(f"/runs/flow-run/{good['flow_run_id']}")
    [parent] = [runs[i] for i in parents]  # both children hang under the one refresh
    assert parent["state_type"] == "FAILED" and parent["deployment_id"] is None  # the refresh ran in `pmpo nightly`
    first, second = sorted(children, key=lambda r: _when(r["start_time"]))
    assert _when(second["start_time"]) >= _when(first["end_time"])  # concurrency limit 1: never side by side

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])  # read the record the worker wrote
    from tasks.mlflow import runs

    tags = runs.run_tags(good["run_id"])
    assert tags["prefect.flow_run_id"] == good["flow_run_id"] == tags["pmpo.nightly.flow_run_id"]
    assert tags["pmpo.nightly.decision"] == good["outcome"]


@pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
def test_pmpo_serve_db_keeps_both_records_on_postgresql(tmp_path, tiny_model_dir):
    import psycopg2

    prefect_port, mlflow_port = _free_port(), _free_port()
    with running_postgres() as url:
        argv = [
            sys.executable,
            "-m",
            "pmpo_cli.main",
            "serve",
            "--db",
            url.replace("/postgres", "/scale"),
            "--prefect-port",
            str(prefect_port),
            "--mlflow-port",
            str(mlflow_port),
        ]
        log = tmp_path / "serve.log"
        with _running(argv, _env(tmp_path), log) as p:
            _wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), "pmpo serve --db", 400, p, log)
            assert "databases scale_mlflow, scale_prefect" in log.read_text()
            assert _get_json(f"http://127.0.0.1:{prefect_port}/api/health") is True
            env = _env(
                tmp_path,
                PREFECT_API_URL=f"http://127.0.0.1:{prefect_port}/api",
                MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
            )
            config = tmp_path / "run.yaml"
            config.write_text(yaml.safe_dump(_tiny(tiny_model_dir)))
            done = _pmpo(["optimize", "--config", str(config), "--output", str(tmp_path / "run.json")], env, tmp_path)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            summary = json.loads((tmp_path / "run.json").read_text())
            p.send_signal(signal.SIGINT)
            assert p.wait(120) == 0, log.read_text()[-3000:]
        server_logs = sorted((tmp_path / "home" / "logs").glob("*.log"))
        assert {f.stem for f in server_logs} >= {"prefect", "mlflow"}
        for server_log in server_logs:  # both servers wrote to PostgreSQL cleanly
            assert not re.search(r"Traceback|\bERROR\b", server_log.read_text()), server_log.read_text()[-3000:]

        base = url.rsplit("/", 1)[0]
        with psycopg2.connect(f"{base}/scale_mlflow") as conn, conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (summary["run_id"],))
            assert cur.fetchone() == ("FINISHED",)
        with psycopg2.connect(f"{base}/scale_prefect") as conn, conn.cursor() as cur:
            cur.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")
            assert ("optimize-prompt", "COMPLETED") in cur.fetchall()
