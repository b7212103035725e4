"""The serverless Prefect API a `pmpo` command runs its flows against, started here so that no kill leaves it behind.

Without a Prefect server (no PREFECT_API_URL), Prefect starts a temporary API server as a child process on first
use and stops it at interpreter exit. A SIGTERM skips that exit code (see `pmpo_cli.main`, which turns SIGTERM into
an interrupt), and a SIGKILL skips everything: the child keeps running, holding a port and a database. So the
command starts that same server itself, up front (Prefect then reuses it: it keeps one per process), and notes
its pid under $PMPO_HOME/run/. The next command finds the notes whose owner is dead and stops their servers.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import time
from pathlib import Path

_SERVER_MARK = "prefect.server.api.server:create_app"  # in the temporary server's command line


def start(home: Path) -> None:
    """Stop servers that killed commands left behind, then start this command's own and note it."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return  # a real server: nothing of ours to start
    notes = home / "run"
    reap_orphans(notes)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's own clients will find and reuse
    server.start()
    if server.server_process is not None:
        note = notes / f"prefect-api-{os.getpid()}.json"
        notes.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"owner": os.getpid(), "server": server.server_process.pid}))
        atexit.register(note.unlink, missing_ok=True)  # registered after Prefect's stop: runs before it


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
