"""The result store: where task results (the resume cache) live, and the locks that keep two processes from
computing the same result at once.

Location: `$PMPO_RESULTS_DIR`, either a directory (local, or a disk that several machines mount at the same path)
or an fsspec URL (`s3://bucket/pmpo`, `gcs://...`, `file:///...`; the protocol's fsspec package must be
installed); default `results/` under `$PMPO_HOME`. Records (what a cache key maps to) go under `records/`, values
under `values/`.

Locks: every persisted task takes its cache key's lock before it looks the key up (Prefect's SERIALIZABLE
isolation). A second process that reaches the same key waits for the first, then reads its result instead of
computing it again. The locks are OS file locks (flock), not Prefect's FileSystemLockManager: its lock files stay
behind when a process is killed, and a killed run would then wait forever on resume; an OS lock goes with its
process. They live beside a directory store (so machines that share the disk share them); for a URL store they
live in `$PMPO_HOME/locks/results`, so only processes of one machine wait for each other (machines may then
compute a result twice, never differently: a result is a function of its key).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from filelock import FileLock, Timeout
from prefect.filesystems import RemoteFileSystem

from pmpo.errors import PmpoError
from tasks.environment import home, redact, results_location
from tasks.serialization import SafeRecordStorage, SafeRemoteRecordStorage

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_HELD: dict[tuple[str, str], FileLock] = {}  # (lock file, holder) -> the lock this process holds for it
_GUARD = threading.Lock()


class ResultStoreError(PmpoError):
    """The result store could not be written (disk full, read-only, gone): the error names the store."""


def check_writable() -> None:
    """Raise ResultStoreError naming the store when a byte cannot be written there (full, read-only, gone).

    Prefect 3.9 logs a result it failed to write and lets the task go on uncached, so a full store would go
    unnoticed until a resumed run redid the work. A probe after each computed step fails the run by name instead,
    at that step's boundary. A URL store (s3://...) is not probed: its writes fail loudly in the SDK.
    """
    location = results_location()
    if is_url(location):
        return
    probe = Path(location) / f".write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
    except OSError as exc:
        raise _named(location, str(probe), exc) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def write_failure(exc: OSError) -> ResultStoreError | None:
    """`exc` as an error naming the result store, when it failed on a file of the store; else None.

    Prefect writes a value, then its record, each straight into its file: a write cut short leaves a value with no
    record, or a record whose value does not decode. Either is a cache miss on read (tasks.serialization), so a
    half-written result is recomputed, never read back as valid.
    """
    location = results_location()
    where = str(exc.filename or "")
    if is_url(location) or not where.startswith(location.rstrip("/") + "/"):
        return None
    return _named(location, where, exc)


def _named(location: str, where: str, exc: OSError) -> ResultStoreError:
    return ResultStoreError(
        f"result store {location} (PMPO_RESULTS_DIR): cannot write {where}: {exc.strerror or exc}; "
        "free space or make it writable, then run again: the run resumes from what was stored"
    )


def is_url(location: str) -> bool:
    """True for an fsspec URL (`s3://...`), False for a directory path."""
    return bool(_URL.match(location))


@dataclass(frozen=True)
class ResultStore:
    """Prefect storage for values and for records, and the lock manager over their keys."""

    location: str
    values: Path | RemoteFileSystem
    records: SafeRecordStorage | SafeRemoteRecordStorage
    locks: "FileLocks"


def result_store() -> ResultStore:
    """The store at `$PMPO_RESULTS_DIR` (read now), its folders created when it is a directory."""
    location = results_location()
    if is_url(location):
        base = location.rstrip("/")
        values = RemoteFileSystem(basepath=f"{base}/values")
        records = SafeRemoteRecordStorage(basepath=f"{base}/records", values=f"{base}/values")
        return ResultStore(location, values, records, FileLocks(str(home() / "locks" / "results")))
    root = Path(location)
    for path in (root / "records", root / "values", root / "locks"):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultStoreError(
                f"result store {redact(location)} (PMPO_RESULTS_DIR): cannot create {path}: {exc.strerror or exc}"
            ) from None
    records = SafeRecordStorage(basepath=str(root / "records"), values=str(root / "values"))
    return ResultStore(location, root / "values", records, FileLocks(str(root / "locks")))


class FileLocks:
    """Prefect's LockManager over OS file locks: held per (key, holder), dropped by the OS when a process dies.

    `hold_timeout` is ignored: a lock outlives its holder only while the holder's process lives.
    """

    def __init__(self, directory: str):
        self.directory = directory

    def _path(self, key: str) -> str:
        os.makedirs(self.directory, exist_ok=True)
        return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Take the key's lock for `holder`, waiting up to `acquire_timeout` s (None: as long as it takes)."""
        path = self._path(key)
        if self.is_lock_holder(key, holder):
            return True
        lock = FileLock(path, timeout=-1 if acquire_timeout is None else acquire_timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        with _GUARD:
            _HELD[(path, holder)] = lock
        return True

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """`acquire_lock` off the event loop."""
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        """Give up `holder`'s lock on the key; a ValueError when it does not hold it (as Prefect's managers do)."""
        with _GUARD:
            lock = _HELD.pop((self._path(key), holder), None)
        if lock is None:
            raise ValueError(f"{holder} does not hold the lock on result {key}")
        lock.release()

    def is_locked(self, key: str) -> bool:
        """True while any holder, in any process, has the key's lock."""
        path = self._path(key)
        with _GUARD:
            if any(p == path for p, _ in _HELD):
                return True
        probe = FileLock(path, timeout=0, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """True when `holder` (in this process) has the key's lock."""
        with _GUARD:
            return (self._path(key), holder) in _HELD

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds the key's lock; False when `timeout` s pass first."""
        probe = FileLock(self._path(key), timeout=-1 if timeout is None else timeout, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            return False
        probe.release()
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """`wait_for_lock` off the event loop."""
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)
