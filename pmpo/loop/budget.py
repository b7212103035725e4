"""The budget check: has the loop spent its `budget` (tokens through the model, wall seconds) yet?

The loop asks between steps, never inside one, so a stop leaves every finished step whole: in the flow each is
in the task cache, and a rerun with a larger budget takes them from there instead of computing them again.
"""

from __future__ import annotations

import time
from typing import Callable

from pmpo.loop.settings import BudgetSettings
from pmpo.models.usage import UsageSnapshot


class BudgetSpent(Exception):
    """Raised between two steps of an iteration when the budget is spent: the loop ends the run there."""


class Budget:
    """What the loop has spent since it started, against `BudgetSettings`."""

    def __init__(self, settings: BudgetSettings, usage: Callable[[], UsageSnapshot]):
        self.settings, self._usage = settings, usage
        self._start_usage, self._start = usage(), time.perf_counter()

    def tokens(self) -> int:
        """Tokens scored, prefilled and generated since the start."""
        u = self._usage() - self._start_usage
        return u.tokens_scored + u.tokens_prefilled + u.tokens_generated

    def seconds(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self._start

    def spent(self) -> bool:
        """Whether either limit is reached."""
        s = self.settings
        return (s.max_tokens is not None and self.tokens() >= s.max_tokens) or (
            s.max_seconds is not None and self.seconds() >= s.max_seconds
        )

    def check(self) -> None:
        """Raise `BudgetSpent` when spent: the step boundary where the loop stops."""
        if self.spent():
            raise BudgetSpent()
