"""The serverless Prefect API a `pmpo` command runs its flows against, started here so that no kill leaves it behind.

Without a Prefect server (no PREFECT_API_URL), Prefect starts a temporary API server as a child process on first
use and stops it at interpreter exit. A SIGTERM skips that exit code (see `pmpo_cli.interrupts`, which turns it into
an interrupt), and a SIGKILL skips everything: the child keeps running, holding a port and a database. So the
command starts that same server itself, up front (Prefect then reuses it: it keeps one per process), and notes
its pid under $PMPO_HOME/run/. The next command finds the notes whose owner is dead and stops their servers.

The server runs in a session of its own. A signal to the command's whole process group (Ctrl-C in a terminal,
systemd stopping the unit, `timeout`) then reaches the command alone, which records the interruption through this
server and only then stops it. In the command's group the server died first, and every report of the interrupted
run failed against a closed port (a long traceback, and over a minute of retries).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import time
from pathlib import Path

_SERVER_MARK = "prefect.server.api.server:create_app"  # in the temporary server's command line
_running: list[int] = []  # the pid of the server this command started, if any


def start(home: Path) -> None:
    """Stop servers that killed commands left behind, then start this command's own and note it."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return  # a real server: nothing of ours to start
    notes = home / "run"
    reap_orphans(notes)
    server = _own_session_server()  # the instance Prefect's own clients will find and reuse
    server.start()
    if server.server_process is not None:
        note = notes / f"prefect-api-{os.getpid()}.json"
        notes.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"owner": os.getpid(), "server": server.server_process.pid}))
        _running.append(server.server_process.pid)
        atexit.register(note.unlink, missing_ok=True)  # registered after Prefect's stop: runs before it


def _own_session_server():
    """Prefect's temporary API server (the same command line and environment), started in a new session."""
    import subprocess
    import sys

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnSessionServer(SubprocessASGIServer):
        # Prefect 3's own command (prefect/server/api/server.py), plus start_new_session.
        def _run_uvicorn_command(self) -> subprocess.Popen:
            argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory"]
            argv += [_SERVER_MARK, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error"]
            env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            env.update(get_current_settings().to_environment_variables(exclude_unset=True))
            return subprocess.Popen(argv + ["--lifespan", "on"], env={**os.environ, **env}, start_new_session=True)

    # SubprocessASGIServer keeps one instance per port in a dict shared with subclasses: created first, this one
    # is what `SubprocessASGIServer()` returns to Prefect's clients later.
    return OwnSessionServer()


def stop_now() -> None:
    """SIGKILL the server this command started: the last resort when the command must exit at once.

    Its note stays: the next command finds its owner dead and sees that the server is gone.
    """
    for pid in _running:
        if _is_temporary_server(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def reap_orphans(notes: Path) -> list[int]:
    """Stop the temporary API servers whose owning command is dead; returns their pids."""
    stopped = []
    for note in sorted(notes.glob("prefect-api-*.json")):
        try:
            owner, server = (json.loads(note.read_text())[k] for k in ("owner", "server"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge
        if _alive(owner):
            continue
        if _is_temporary_server(server):
            _stop(server)
            stopped.append(server)
        note.unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_temporary_server(pid: int) -> bool:
    """The pid still runs Prefect's temporary server (a pid reused by another program is left alone)."""
    try:
        return _SERVER_MARK in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _stop(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
