"""A throwaway PostgreSQL server in a temp directory, for the tests and benchmarks that need a real one.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the unprivileged `nobody`
(through `runuser`), in a directory of its own chowned to it. It listens on 127.0.0.1 only, with trust auth for
its one superuser `pmpo`, and its socket in its own directory (so nothing of the system's is touched).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

USER = "pmpo"  # the superuser initdb creates (trust auth: no password to keep)
RUN_AS = "nobody"  # when we are root: present on every Debian/Ubuntu machine, owns nothing


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start a fresh server; yield its URL (database `postgres`); stop it and delete its files at the end."""
    with postgres_server() as server:
        yield server.url


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: its URL, and how to restart it (fault-injection tests)."""

    url: str
    ctl: tuple[str, ...]  # pg_ctl -D <data>, as the server's user
    log: Path  # the server's log (without one, pg_ctl's pipes would stay open for as long as the server runs)

    def restart(self) -> None:
        """Stop it (fast: clients are disconnected) and start it again on the same port and data."""
        _run([*self.ctl, "-l", str(self.log), "-m", "fast", "-w", "-t", "120", "restart"])


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """`running_postgres`, yielding the server itself."""
    bindir = binaries()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="pmpo-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres will not run as root
        shutil.chown(root, RUN_AS)
        prefix = ["runuser", "-u", RUN_AS, "--"]
    data, port = root / "data", free_port()
    ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        _run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "--no-locale", "-E", "UTF8"]
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        _run([*ctl, "-l", str(root / "server.log"), "-o", options, "-w", "-t", "120", "start"])
        try:
            yield Postgres(f"postgresql://{USER}@127.0.0.1:{port}/postgres", tuple(ctl), root / "server.log")
        finally:
            _run([*ctl, "-m", "fast", "-w", "stop"], check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[str], check: bool = True) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd="/")
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
