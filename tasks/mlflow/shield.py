"""Store calls that a stop signal cannot cut in half.

SIGINT (Ctrl-C) and SIGTERM (Prefect's handler during a flow run, or the CLI's) raise an exception in the main
thread wherever it happens to be. Raised inside the database store's own transaction handling, it can leave a
connection of this process holding SQLite's lock, and then the write that records the interruption (the run marked
FAILED) waits out MLflow's 20-second busy timeout and fails. So each call on a database store runs with the stop
signals held back, and the first one that came is raised again, by the handler that was in place, as the call returns.

A server store (http, https, databricks) is not shielded: a request cut short leaves no lock here, and a call
retried for minutes against a server that is down must stay interruptible.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Iterator

_STOPS = (signal.SIGTERM, signal.SIGINT)
_SERVER_SCHEMES = ("http://", "https://", "databricks")


def is_database(uri: str) -> bool:
    """Whether MLflow reaches this store through SQLAlchemy, in this process (SQLite, PostgreSQL, MySQL ...)."""
    return "://" in uri and not uri.startswith((*_SERVER_SCHEMES, "file://"))


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held back; the first one that came is raised as the block ends."""
    before = {sig: signal.getsignal(sig) for sig in _STOPS}
    # Python raises signals in the main thread only: elsewhere nothing can be cut. A handler installed from C
    # (None) could not be put back: leave it be.
    if threading.current_thread() is not threading.main_thread() or None in before.values():
        yield
        return
    came: list[int] = []
    for sig in _STOPS:
        signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])  # the handler in place runs now, at this line


class Shielded:
    """An MlflowClient whose every method call runs with the stop signals held back."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def held(*args: Any, **kwargs: Any) -> Any:
            with stops_held():
                return attr(*args, **kwargs)

        return held
