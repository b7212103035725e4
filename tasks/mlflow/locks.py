"""File locks under $PMPO_HOME/locks: the one-time set-up of the SQLite store, and one live owner per run.

Both are OS file locks (`filelock`, flock on Unix): the OS drops them when the process dies, however it dies,
so a lock is never stale. Several processes on one machine, or on machines sharing PMPO_HOME on a disk with
working flock, are covered; runs on other machines against one remote MLflow server do not see each other's
locks (their data directories differ).

One owner per run: an optimisation run is written by the process that holds its run key's lock. A second
identical command started while the first is alive does not wait (it could wait hours) and does not attach:
it exits at once with `RunBusy`, naming the owner's host and pid. Once the owner has finished, failed or was
killed (SIGKILL included), the lock is free and the next identical command resumes the run, as before.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from pmpo.errors import PmpoError
from tasks.environment import home

# First use of a store creates it and runs every schema migration: seconds, or minutes on a loaded machine.
STORE_SETUP_TIMEOUT_S = 600.0
_held: dict[Path, FileLock] = {}  # run locks this process owns, by lock file


class RunBusy(PmpoError):
    """Another live process is writing the run this command would continue."""


def locks_dir() -> Path:
    """$PMPO_HOME/locks (created)."""
    path = home() / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def owner() -> str:
    """This process as `host:pid`, the owner recorded on a run it writes."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def store_setup(name: str) -> Iterator[None]:
    """Hold the lock under which the store `name` is created and migrated (one process at a time)."""
    lock = FileLock(locks_dir() / f"store-{name}.lock", timeout=STORE_SETUP_TIMEOUT_S, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise PmpoError(f"waited {STORE_SETUP_TIMEOUT_S:.0f} s for another process to set up {name}") from None
    try:
        yield
    finally:
        lock.release()


def claim_run(run_key: str) -> None:
    """Become the one writer of the run `run_key`, or raise `RunBusy` naming the live owner (re-claiming is a no-op)."""
    path = locks_dir() / f"run-{run_key}.lock"
    if path in _held:
        return
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusy(
            f"run {run_key} is being written by {_owner_of(path)}: wait for it to finish, or stop it "
            "(an identical command run after it ends, or is killed, continues the same run)"
        ) from None
    _held[path] = lock
    _owner_file(path).write_text(f"{owner()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")


def release_run(run_key: str) -> None:
    """Give up the run's lock (when it finishes or fails; a dead process's lock goes by itself)."""
    path = locks_dir() / f"run-{run_key}.lock"
    lock = _held.pop(path, None)
    if lock is not None:
        _owner_file(path).unlink(missing_ok=True)
        lock.release()


def _owner_file(lock: Path) -> Path:
    # Beside the lock, not in it: opening a lock file to try it may truncate it.
    return lock.with_suffix(".owner")


def _owner_of(lock: Path) -> str:
    try:
        return _owner_file(lock).read_text().strip() or "another process"
    except OSError:
        return "another process"
