"""Store calls that a stop signal cannot cut in half: a signal that comes during a call waits for its end, then
reaches the handler that was in place; other threads and server stores are left alone."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tasks.mlflow import shield
from tasks.mlflow.store import client, experiment_id


@pytest.fixture(autouse=True)
def ctrl_c():
    """Python's own SIGINT handler (Ctrl-C raises KeyboardInterrupt) for each test, whatever an earlier test left."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class _Store:
    """A call that is signalled half-way and records whether its second half ran."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def write(self, value: int) -> int:
        self.steps.append("begin")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, mid-transaction
        for _ in range(1000):  # bytecode on which an unheld handler would have raised
            pass
        self.steps.append("commit")
        return value


def test_a_signal_during_a_call_is_raised_after_the_call_ends():
    store = _Store()
    with pytest.raises(KeyboardInterrupt):
        shield.Shielded(store).write(1)
    assert store.steps == ["begin", "commit"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_the_held_signal_reaches_the_handler_that_was_in_place():
    came: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    try:
        with shield.stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert came == []
        assert came == [signal.SIGTERM]  # once: the first signal is the one the command acts on
    finally:
        signal.signal(signal.SIGTERM, before)


def test_without_a_signal_the_call_returns_and_the_handlers_stay():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert shield.Shielded(_Calls()).add(2, 3) == 5
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class _Calls:
    name = "calls"

    def add(self, a: int, b: int) -> int:
        return a + b


def test_outside_the_main_thread_the_call_just_runs():
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(shield.Shielded(_Calls()).add(1, 1)))
    worker.start()
    worker.join()
    assert results == [2]  # signal.signal would have raised ValueError there


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("sqlite:////tmp/mlflow.db", True),
        ("postgresql://user@localhost/mlflow", True),
        ("http://localhost:5000", False),
        ("https://mlflow.example.com", False),
        ("databricks", False),
        ("file:///tmp/mlruns", False),
        ("/tmp/mlruns", False),
    ],
)
def test_only_stores_reached_through_a_database_connection_are_shielded(uri, database):
    assert shield.is_database(uri) is database


def test_the_default_store_client_is_shielded_and_keeps_its_attributes(exp):
    c = client()
    assert isinstance(c, shield.Shielded)
    assert c.get_experiment(experiment_id(c, exp)).name == exp
    assert c.tracking_uri.startswith("sqlite:///")
