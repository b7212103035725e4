"""What a run cost: model work counters (forward passes, tokens scored, tokens generated) and wall time per step.

Every `LoadedModel` carries a `Usage` that the scorer and generation increment; a `Meter` turns the counters and
a clock into a `Cost` per step (mask, rewrite, loss, select, evaluate) for one span of work: an iteration, the
initial scoring, the held-out check. Costs add up, so per-iteration costs sum to the run's total.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, Literal, Sequence

Step = Literal["mask", "rewrite", "loss", "select", "evaluate"]
STEPS: tuple[Step, ...] = ("mask", "rewrite", "loss", "select", "evaluate")


@dataclass(frozen=True)
class UsageSnapshot:
    """The counters of a `Usage` at one moment, or the difference between two moments."""

    forward_passes: int = 0
    tokens_scored: int = 0  # tokens run through the model by the scorer (prefix and padded batches)
    tokens_generated: int = 0  # new tokens produced by generation (not the padding after a row ended)
    # Context tokens generation ran before its first new token (every row, padding included): a rewrite
    # request is hundreds of tokens for a reply of tens, so this is most of what a rewrite costs.
    tokens_prefilled: int = 0

    def __add__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass
class Usage:
    """Mutable counters of the work one loaded model did in this process."""

    forward_passes: int = 0
    tokens_scored: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0

    def scored(self, tokens: int) -> None:
        """One scoring forward pass over `tokens` tokens."""
        self.forward_passes += 1
        self.tokens_scored += tokens

    def generated(self, tokens: int, passes: int, prefilled: int = 0) -> None:
        """A generate call that read `prefilled` context tokens and produced `tokens` in `passes` forward passes."""
        self.forward_passes += passes
        self.tokens_generated += tokens
        self.tokens_prefilled += prefilled

    def snapshot(self) -> UsageSnapshot:
        """The counters now, frozen."""
        return UsageSnapshot(self.forward_passes, self.tokens_scored, self.tokens_generated, self.tokens_prefilled)


def produced_tokens(new_ids: Sequence[Sequence[int]], stops: set[int], pad_id: int | None) -> int:
    """New tokens generate() actually produced in rows of `new_ids`: up to the first stop token, inclusive.

    A row that ended without a stop token (a stopping criterion, or another row still running) is padded
    after its end; trailing padding is not produced. Where the pad token is itself a stop token, a row that a
    stopping criterion ended counts its first pad token too: at most one token over, never under.
    """
    total = 0
    for row in new_ids:
        row = list(row)
        end = next((i + 1 for i, tok in enumerate(row) if tok in stops), None)
        if end is None:
            end = len(row)
            while end > 0 and row[end - 1] == pad_id:
                end -= 1
        total += end
    return total


@dataclass(frozen=True)
class StepCost:
    """Wall seconds and model work of one kind of step within a span."""

    seconds: float = 0.0
    usage: UsageSnapshot = UsageSnapshot()
    calls: int = 0

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(self.seconds + other.seconds, self.usage + other.usage, self.calls + other.calls)


@dataclass(frozen=True)
class Cost:
    """What a span of work (an iteration, the initial scoring, the held-out check, a run) cost, by step."""

    mask: StepCost = StepCost()
    rewrite: StepCost = StepCost()
    loss: StepCost = StepCost()
    select: StepCost = StepCost()
    evaluate: StepCost = StepCost()

    @property
    def seconds(self) -> float:
        """Wall seconds over all steps."""
        return sum(self.step(s).seconds for s in STEPS)

    @property
    def usage(self) -> UsageSnapshot:
        """Model work over all steps."""
        return sum((self.step(s).usage for s in STEPS), UsageSnapshot())

    def step(self, name: Step) -> StepCost:
        """The cost of one step."""
        return getattr(self, name)

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(self.step(s) + other.step(s) for s in STEPS))


def total(costs: Sequence[Cost]) -> Cost:
    """The sum of many costs."""
    return sum(costs, Cost())


class Meter:
    """Times steps and takes usage deltas around each; `take()` returns the cost so far and starts afresh."""

    def __init__(self, usage: Callable[[], UsageSnapshot]):
        self._usage = usage
        self._cost = Cost()

    @contextlib.contextmanager
    def step(self, name: Step) -> Iterator[None]:
        """Charge the block's wall time and model work to step `name`."""
        if name not in STEPS:
            raise ValueError(f"unknown step {name!r}; steps are {', '.join(STEPS)}")
        before, start = self._usage(), time.perf_counter()
        try:
            yield
        finally:
            spent = StepCost(time.perf_counter() - start, self._usage() - before, 1)
            self._cost = replace(self._cost, **{name: self._cost.step(name) + spent})

    def take(self) -> Cost:
        """The cost since the last take (or since the meter was made), and reset."""
        cost, self._cost = self._cost, Cost()
        return cost
