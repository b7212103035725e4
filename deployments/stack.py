"""`pmpo serve`: a Prefect server, an MLflow server and the served deployments on one machine, as child
processes, stopped together on Ctrl-C or SIGTERM.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only this supervisor, which then stops
the children in reverse order (the deployments first, the Prefect server last) and waits for them: a server is
never left holding its port. The servers log to files under $PMPO_HOME/logs; the served flows log to the terminal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from deployments import postgres
from deployments.serve import DEFAULT_CRON, DEFAULT_TIMEZONE, DEPLOYMENTS, EXAMPLE_PROMPTS
from pmpo.errors import PmpoError

# Direct connections only: a proxy from the environment must not stand between us and 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
OFFLINE = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


class StackError(PmpoError):
    """A server of the local stack could not start (port taken, crashed, or not healthy in time)."""


@dataclass(frozen=True)
class StackSettings:
    """Where the servers listen, what the nightly refresh manages, and where records live."""

    home: Path  # $PMPO_HOME: MLflow's SQLite store and artifacts, Prefect's database, the logs
    host: str = "127.0.0.1"  # this machine only; a server reachable from elsewhere is the user's own decision
    prefect_port: int = 4200  # Prefect's default
    mlflow_port: int = 5000  # MLflow's default
    prompts_file: Path = EXAMPLE_PROMPTS
    cron: str = DEFAULT_CRON
    timezone: str = DEFAULT_TIMEZONE
    # `prefect server start` is healthy in ~7 s on an idle machine; a first start on a busy 2-core one (database
    # set-up) has taken over a minute.
    startup_timeout: float = 240.0
    db: str | None = None  # postgresql://user@host:port/db: both servers' records there (None: SQLite in home)
    # False: the servers only, for a work pool whose workers run the deployments of prefect.yaml (a served
    # deployment of the same name would take their runs).
    serve_deployments: bool = True

    @property
    def prefect_url(self) -> str:
        """The Prefect UI (its API is under /api)."""
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        """The MLflow UI and tracking URI."""
        return f"http://{self.host}:{self.mlflow_port}"


@dataclass
class Stack:
    """The running children, in start order."""

    settings: StackSettings
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _logs: list[IO] = field(default_factory=list)

    def start(self, say: Callable[[str], None] = print) -> None:
        """Start the Prefect server, the MLflow server and the deployments; return when all are ready."""
        try:
            self._start(say)
        except BaseException:  # a failed or interrupted start leaves nothing running
            self.stop()
            raise

    def _start(self, say: Callable[[str], None]) -> None:
        s = self.settings
        for port, flag in ((s.prefect_port, "--prefect-port"), (s.mlflow_port, "--mlflow-port")):
            if not port_is_free(s.host, port):
                raise StackError(
                    f"port {port} on {s.host} is in use (another server running?): choose another with {flag}"
                )
        (s.home / "logs").mkdir(parents=True, exist_ok=True)
        py = sys.executable
        prefect_env, mlflow_store = {}, f"sqlite:///{s.home / 'mlflow.db'}"
        if s.db:
            stores = postgres.ensure_databases(s.db)
            say(f"records on PostgreSQL {postgres.redacted(s.db)}: databases {', '.join(stores.databases)}")
            prefect_env, mlflow_store = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": stores.prefect}, stores.mlflow
        say(f"starting the Prefect server on {s.prefect_url} ...")
        # The UI asks /ui-settings where the API is; without PREFECT_UI_API_URL it answers with the default port
        # (4200), whatever --port says, and every UI page on another port fails to load its data.
        self._spawn(
            "prefect",
            [py, "-m", "prefect", "server", "start", "--host", s.host, "--port", str(s.prefect_port)],
            {"PREFECT_HOME": str(s.home / "prefect"), "PREFECT_UI_API_URL": f"{s.prefect_url}/api", **prefect_env},
        )
        say(f"starting the MLflow server on {s.mlflow_url} ...")
        self._spawn(
            "mlflow",
            [
                py,
                "-m",
                "mlflow",
                "server",
                "--host",
                s.host,
                "--port",
                str(s.mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                mlflow_store,
                "--artifacts-destination",
                str(s.home / "mlartifacts"),
            ],
            {},
        )
        self._wait(lambda: _get(f"{s.prefect_url}/api/health") is not None, "the Prefect server")
        self._wait(lambda: _get(f"{s.mlflow_url}/health") is not None, "the MLflow server")
        if not s.serve_deployments:
            return
        say("starting the deployments ...")
        serve = [
            py,
            "-m",
            "deployments.serve",
            "--prompts",
            str(s.prompts_file),
            "--cron",
            s.cron,
            "--timezone",
            s.timezone,
        ]
        # INFO: the flow runs' own log (each nightly decision is a line of it) goes to the Prefect UI and here.
        env = {
            "PREFECT_API_URL": f"{s.prefect_url}/api",
            "MLFLOW_TRACKING_URI": s.mlflow_url,
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        self._spawn("serve", serve, env, log=False)
        self._wait(lambda: set(DEPLOYMENTS) <= self.deployments(), "the deployments")

    def deployments(self) -> set[str]:
        """`flow/deployment` names the Prefect server knows."""
        found = _post(f"{self.settings.prefect_url}/api/deployments/filter", {}) or []
        flows = {f["id"]: f["name"] for f in _post(f"{self.settings.prefect_url}/api/flows/filter", {}) or []}
        return {f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in found}

    def wait(self) -> int:
        """Block until SIGINT/SIGTERM (0) or until a child dies by itself (1); then stop everything."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                dead = [(name, p.returncode) for name, p in self.children if p.poll() is not None]
                if dead:
                    print(f"pmpo serve: {dead[0][0]} exited with code {dead[0][1]}; stopping the rest", file=sys.stderr)
                    return 1
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace: float = 20.0) -> None:
        """Stop the children, last started first: SIGTERM to each one's process group, SIGKILL after `grace` s."""
        for name, p in reversed(self.children):
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(p, signal.SIGKILL)
                    p.wait()
        self.children.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], log: bool = True) -> None:
        s = self.settings
        full_env = {**os.environ, **OFFLINE, "PMPO_HOME": str(s.home), **env}
        out: IO | None = None
        if log:
            out = open(s.home / "logs" / f"{name}.log", "ab")
            self._logs.append(out)
        # Own session: the terminal's Ctrl-C reaches the supervisor only, and a group signal reaches grandchildren.
        p = subprocess.Popen(
            argv, env=full_env, stdout=out, stderr=subprocess.STDOUT if log else None, start_new_session=True
        )
        self.children.append((name, p))

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        logs = self.settings.home / "logs"
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            dead = [(n, p.returncode) for n, p in self.children if p.poll() is not None]
            if dead:
                name, code = dead[0]
                raise StackError(f"{name} exited with code {code} while starting: see {logs}")
            if ready():
                return
            time.sleep(0.5)
        raise StackError(f"{what} did not become ready in {self.settings.startup_timeout:.0f} s: see {logs}")


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens on host:port (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind: connections of a stopped server lingering in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass  # already gone


def _get(url: str):
    try:
        with _HTTP.open(url, timeout=3) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(request, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
