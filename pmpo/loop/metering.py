"""Steps that charge each call's wall time and model work to a `Meter`: how the loop knows what each iteration cost.

Wrapping the steps keeps the loop's body free of timing code, and works the same for in-process and Prefect steps.
"""

from __future__ import annotations

from typing import Any

from pmpo.loop.result import Candidate, SegmentEffect
from pmpo.loop.steps import Rewrites, Steps
from pmpo.models.usage import Meter, UsageSnapshot
from pmpo.scoring.loss import LossMatrix


class MeteredSteps:
    """Steps that charge each call's wall time and model work to a `Meter` (what each iteration cost)."""

    def __init__(self, steps: Steps):
        self.inner = steps
        # Steps written before the usage counters (test doubles, other backends) report no model work.
        self.usage = getattr(steps, "usage", UsageSnapshot)
        self.meter = Meter(self.usage)

    def losses(self, *args: Any, **kwargs: Any) -> LossMatrix:
        """The inner steps' losses, metered as `loss`."""
        with self.meter.step("loss"):
            return self.inner.losses(*args, **kwargs)

    def segments(self, *args: Any, **kwargs: Any) -> tuple[list[str], tuple[SegmentEffect, ...]]:
        """The inner steps' segments, metered as `mask`."""
        with self.meter.step("mask"):
            return self.inner.segments(*args, **kwargs)

    def rewrites(self, *args: Any, **kwargs: Any) -> Rewrites:
        """The inner steps' rewrites, metered as `rewrite`."""
        with self.meter.step("rewrite"):
            return self.inner.rewrites(*args, **kwargs)

    def select(self, *args: Any, **kwargs: Any) -> Candidate:
        """The inner steps' selection, metered as `select`."""
        with self.meter.step("select"):
            return self.inner.select(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # anything else (model_identity, scorer, work) is the inner steps'
