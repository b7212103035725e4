"""The deployments: prefect.yaml and deployments.serve declare the three deployments as specified; for real
(marked `server`), prefect.yaml deploys to a local Prefect server and a process worker runs `optimize` to
completion from this checkout, and `pmpo serve` starts both servers and the deployments and stops them on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def test_prefect_yaml_declares_the_three_deployments(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # entrypoints are relative to the checkout, as `prefect deploy` reads them
    found = _deployments()
    flows = {name: load_flow_from_entrypoint(d["entrypoint"]).name for name, d in found.items()}
    assert flows == {"nightly-refresh": "nightly-refresh", "optimize": "optimize-prompt", "compare": "compare-prompts"}
    [schedule] = found["nightly-refresh"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"]
    assert "schedules" not in found["optimize"] and "schedules" not in found["compare"]  # on demand
    assert {d["work_pool"]["name"] for d in found.values()} == {"pmpo"}


def test_every_run_sends_heartbeats_often_enough_for_the_crashed_runs_automation():
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import Settings

    import flows  # noqa: F401  (as every pmpo entry point does first: it sets pmpo's environment defaults)

    found = _deployments()
    beats = {
        name: int(d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
        for name, d in found.items()
    }
    beats["cli"] = Settings().flows.heartbeat_frequency  # what a run started from pmpo's CLI or Python sends
    assert "retries" not in found["optimize"]  # a crashed child runs again in the next refresh (docs/operations.md)
    automation = AutomationCore.model_validate(yaml.safe_load((ROOT / "deployments" / "crashed-runs.yaml").read_text()))
    for name, beat in beats.items():  # a live run, its beats on time or one late, is never declared dead
        assert automation.trigger.within.total_seconds() >= 3 * beat, name
    assert automation.trigger.after == {"prefect.flow-run.heartbeat"}
    [action] = automation.actions
    assert (action.type, action.state.value) == ("change-flow-run-state", "CRASHED")


def test_prefect_yaml_pulls_from_the_local_checkout():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    [build] = spec["build"]
    [pull] = spec["pull"]
    step_id = build["prefect.deployments.steps.run_shell_script"]["id"]
    # The only pull step: back to where `prefect deploy` ran (no git clone: no network needed).
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": f"{{{{ {step_id}.stdout }}}}"}}


def test_nightly_deployment_parameters_name_a_valid_prompts_file(monkeypatch):
    from flows.managed import ManagedPrompt, NightlyConfig, plan

    monkeypatch.chdir(ROOT)
    config = NightlyConfig.model_validate(_deployments()["nightly-refresh"]["parameters"]["config"])
    the_plan = plan(config)
    assert [e.label for e in the_plan.entries] == ["sentiment", "arithmetic"]
    assert all(isinstance(e.managed(), ManagedPrompt) for e in the_plan.entries)


def test_optimize_parameters_are_a_form():
    from prefect.utilities.callables import parameter_schema

    from flows.optimize import optimize_prompt

    schema = parameter_schema(optimize_prompt).model_dump()
    assert list(schema["properties"]) == ["config"]
    fields = schema["definitions"]["OptimizeConfig"]["properties"]
    assert {"data", "model", "prompt", "iterations", "rewrite", "eval"} <= set(fields)


def test_serve_builds_the_same_deployments_with_a_configurable_schedule():
    from deployments.serve import build

    nightly, optimize, compare = build("/data/prompts.yaml", cron="30 3 * * *", timezone="Europe/Berlin")
    assert [d.name for d in (nightly, optimize, compare)] == ["nightly-refresh", "optimize", "compare"]
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 3 * * *", "Europe/Berlin")
    assert nightly.parameters == {"config": {"prompts_file": "/data/prompts.yaml"}}
    assert not optimize.schedules and not compare.schedules


# -- for real: servers as subprocesses -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the worker starts `python`
        PMPO_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        **extra,
    )
    return env


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str], log: Path | None, cwd: Path = ROOT, **popen):
    """A background process in its own group, stopped (SIGTERM, then SIGKILL) with its children at the end.

    `log` None: its output is dropped; `popen`: more subprocess.Popen arguments (e.g. a preexec_fn).
    """
    with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        p = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
        try:
            yield p
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _get_json(url: str):
    with _HTTP.open(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_until(ready, what: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: process exited\n{log.read_text()[-3000:]}"
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        time.sleep(1)
    pytest.fail(f"{what} not ready in {timeout} s\n{log.read_text()[-3000:]}")


def _browser_dom(url: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium (Debian's `chromium`; .ci/run installs it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _check_ui_in_a_browser(prefect_url: str, mlflow_url: str) -> None:
    """The UIs work on the ports they were started on: the pages load their data from the right API."""
    page = _browser_dom(f"{prefect_url}/deployments")
    assert "Create a deployment to get started" not in page and "Something went wrong" not in page
    for name in ("nightly-refresh", "optimize", "compare"):
        assert name in page, f"deployment {name} not listed on the Deployments page"
    [optimize] = [d for d in _post_json(f"{prefect_url}/api/deployments/filter", {}) if d["name"] == "optimize"]
    form = _browser_dom(f"{prefect_url}/deployments/deployment/{optimize['id']}/run")
    for field in ("Iterations", "Train Fraction", "Segment Removal"):  # the config's fields, as the form titles them
        assert field in form, f"the optimize run form has no {field!r} field"
    assert "MLflow" in _browser_dom(mlflow_url)


def _post_json(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with _HTTP.open(request, timeout=5) as response:
        return json.loads(response.read())


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = ROOT) -> str:
    argv = [sys.executable, "-m", "prefect", *args]
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.server
def test_prefect_yaml_deploys_and_a_worker_runs_optimize(tmp_path, tiny_model_dir, monkeypatch):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, PREFECT_API_URL=api)
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _running(server, env, tmp_path / "server.log") as srv:
        _wait_until(lambda: _get_json(f"{api}/health") is True, "prefect server", 300, srv, tmp_path / "server.log")
        _prefect(["work-pool", "create", "pmpo", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env)
        # The worker starts elsewhere: only the pull step can bring the flow run back to this checkout.
        worker = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "pmpo", "--limit", "1"]
        with _running(worker, env, tmp_path / "worker.log", cwd=tmp_path):
            config = {
                "data": {"source": "builtin:sentiment", "limit": 20},
                "model": {"spec": str(tiny_model_dir), "dtype": "float32"},
                "iterations": 1,
                "rewrite": {"k": 1, "n": 1, "max_new_tokens": 8},
                "eval": {"max_examples": 4, "generate": False},
            }
            run = [
                "deployment",
                "run",
                "optimize-prompt/optimize",
                "--params",
                json.dumps({"config": config}),
                "--watch",
                "--watch-timeout",
                "420",
            ]
            shown = _prefect(run, env, timeout=480, cwd=tmp_path)
            flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", shown).group(1)
            state = _get_json(f"{api}/flow_runs/{flow_run_id}")["state"]
            assert state["type"] == "COMPLETED", (state, (tmp_path / "worker.log").read_text()[-3000:])

    monkeypatch.setenv("PMPO_HOME", env["PMPO_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tasks.mlflow import queries

    [recorded] = queries.list_runs("sentiment")  # the worker's flow run left its MLflow record
    assert recorded["status"] == "FINISHED" and recorded["n_candidates"] >= 1


@pytest.mark.server
def test_pmpo_serve_starts_both_servers_and_the_deployments_and_stops_on_ctrl_c(tmp_path):
    from deployments.serve import DEPLOYMENTS
    from deployments.stack import Stack, StackSettings, port_is_free

    prefect_port, mlflow_port = _free_port(), _free_port()
    ports = ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]
    log = tmp_path / "serve.log"
    with _running([sys.executable, "-m", "pmpo_cli.main", "serve", *ports], _env(tmp_path), log) as p:
        _wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), "pmpo serve", 400, p, log)
        shown = log.read_text()
        assert f"Prefect UI:  http://127.0.0.1:{prefect_port}" in shown
        assert f"MLflow UI:   http://127.0.0.1:{mlflow_port}" in shown
        assert _get_json(f"http://127.0.0.1:{prefect_port}/api/health") is True
        # The UI finds its API through /ui-settings: on a non-default port it must name that port.
        assert (
            _get_json(f"http://127.0.0.1:{prefect_port}/ui-settings")["api_url"]
            == f"http://127.0.0.1:{prefect_port}/api"
        )
        known = Stack(StackSettings(home=tmp_path, prefect_port=prefect_port)).deployments()
        assert set(DEPLOYMENTS) <= known
        with _HTTP.open(f"http://127.0.0.1:{mlflow_port}/health", timeout=5) as response:
            assert response.status == 200
        _check_ui_in_a_browser(f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}")
        p.send_signal(signal.SIGINT)
        assert p.wait(120) == 0, log.read_text()[-3000:]
    assert "stopped" in log.read_text()
    for port in (prefect_port, mlflow_port):  # nothing listens any more
        assert port_is_free("127.0.0.1", port)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
