"""Progress of long steps, for whoever listens in this process (the CLI draws bars; a flow alone ignores it).

Tasks report `advance` events as they work; the steps that call them report `start` and `done` (with
whether the result came from the cache). Listeners must be quick and must not raise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

Kind = Literal["start", "advance", "done", "note"]  # note: a line worth showing, e.g. an iteration's outcome


@dataclass(frozen=True)
class Event:
    """One progress report about the step named `label` (a task run name, e.g. `loss iter=2 13x40`, or a note)."""

    kind: Kind
    label: str
    completed: int = 0
    total: int | None = None  # None: no natural unit of work to count
    cached: bool = False  # on `done`: the result came from the task cache


Listener = Callable[[Event], None]
_listeners: list[Listener] = []


def report(event: Event) -> None:
    """Tell every listener."""
    for listener in list(_listeners):
        listener(event)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Register `listener` for the duration of the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
