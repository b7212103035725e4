"""What a flow run cost, as the summary and its JSON show it: totals, each step, each iteration, the held-out check.

Counts are the work this process did: a step served from the task cache computes nothing and costs ~0, so a
fully cached rerun reports 0 tokens scored.
"""

from __future__ import annotations

from pydantic import BaseModel

from pmpo.loop.result import OptimizeResult
from pmpo.models.usage import STEPS, Cost, StepCost


class StepRow(BaseModel):
    """Wall time and model work of one kind of step."""

    seconds: float
    calls: int
    forward_passes: int
    tokens_scored: int
    tokens_generated: int
    tokens_prefilled: int


class CostRow(BaseModel):
    """Wall time and model work of a span (an iteration, the initial scoring, the held-out check, the run)."""

    seconds: float  # summed over steps
    forward_passes: int
    tokens_scored: int
    tokens_generated: int
    tokens_prefilled: int  # context tokens read by generation before its first new token
    steps: dict[str, StepRow]  # mask, rewrite, loss, select, evaluate


class CostSummary(BaseModel):
    """A run's cost: `total` = `initial` + each of `iterations` + `heldout`."""

    total: CostRow
    initial: CostRow  # scoring the initial prompt on the training set
    iterations: list[CostRow]  # iteration 1..T, in order
    heldout: CostRow | None  # both prompts on held-out data (None: no held-out split)


def step_row(cost: StepCost) -> StepRow:
    """One step's cost as a summary row."""
    u = cost.usage
    return StepRow(
        seconds=cost.seconds,
        calls=cost.calls,
        forward_passes=u.forward_passes,
        tokens_scored=u.tokens_scored,
        tokens_generated=u.tokens_generated,
        tokens_prefilled=u.tokens_prefilled,
    )


def cost_row(cost: Cost) -> CostRow:
    """A span's cost as a summary row."""
    u = cost.usage
    return CostRow(
        seconds=cost.seconds,
        forward_passes=u.forward_passes,
        tokens_scored=u.tokens_scored,
        tokens_generated=u.tokens_generated,
        tokens_prefilled=u.tokens_prefilled,
        steps={s: step_row(cost.step(s)) for s in STEPS},
    )


def cost_summary(result: OptimizeResult, heldout: Cost | None) -> CostSummary:
    """The run's cost block, from the optimizer's result and the held-out check's cost."""
    return CostSummary(
        total=cost_row(run_cost(result, heldout)),
        initial=cost_row(result.initial_cost),
        iterations=[cost_row(it.cost) for it in result.iterations],
        heldout=cost_row(heldout) if heldout is not None else None,
    )


def run_cost(result: OptimizeResult, heldout: Cost | None) -> Cost:
    """The whole run: optimisation and the held-out check."""
    return result.cost + (heldout or Cost())
