"""The quality benchmark's results: per task and arm, means over tasks, the issue's targets, table and JSON.

Accuracy intervals are `pmpo.evaluation.stats.Interval`s (estimate, low, high) of the paired difference arm - initial on
the same held-out examples. Tasks without options have no acc / acc_norm; their *headline accuracy* (what the
targets call acc_norm) is the generation accuracy instead, so every task counts toward the targets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from pmpo.evaluation.stats import Interval

INITIAL = "initial"
PMPO = "pmpo"
ARMS = (INITIAL, PMPO, "pmpo_no_masking", "pmpo_ce", "ape")
METRICS = ("loss", "acc", "acc_norm", "gen_acc")
# Issue targets: acc_norm at least the initial's on 5 of the 6 shared tasks, +3 points on average;
# PMPO at least APE's accuracy at 1/5 of its forward tokens or less.
WIN_SHARE = 5 / 6
MIN_MEAN_GAIN = 0.03
MAX_COMPUTE_RATIO = 0.2


@dataclass(frozen=True)
class Measure:
    """One held-out figure of an arm and its paired difference to the initial prompt."""

    value: float | None  # None: the task has no such figure (acc / acc_norm need options)
    delta: Interval | None = None  # arm - initial with its 95% interval; None for the initial arm itself


@dataclass(frozen=True)
class Cost:
    """Compute one arm spent on one task (usage counter deltas and wall time)."""

    forward_passes: int
    tokens_scored: int
    tokens_generated: int
    wall_s: float
    # Context tokens generation read before its first new token (rewrite requests, APE's training answers): most
    # of a generating method's compute, so the 1/5-compute target must count them.
    tokens_prefilled: int = 0

    @property
    def forward_tokens(self) -> int:
        """Tokens through the model, scored, read as generation context, or generated: what the targets compare."""
        return self.tokens_scored + self.tokens_prefilled + self.tokens_generated


@dataclass(frozen=True)
class ArmResult:
    """How one arm's final prompt does on one task's held-out examples, and what it cost."""

    task: str
    shared: bool  # one of the ../shared/data/bbh tasks the first target counts
    arm: str
    prompt: str
    candidates: int  # prompts the arm scored (PMPO) or proposed (APE); 1 for the initial prompt
    loss: Measure  # held-out loss under one fixed objective for every arm
    acc: Measure
    acc_norm: Measure
    gen_acc: Measure
    cost: Cost

    @property
    def headline(self) -> Measure:
        """acc_norm where the task has options, else generation accuracy."""
        return self.acc_norm if self.acc_norm.value is not None else self.gen_acc


@dataclass(frozen=True)
class ArmSummary:
    """An arm's figures averaged over the tasks it ran on (deltas: mean paired difference to initial)."""

    arm: str
    tasks: int
    loss: float | None
    loss_delta: float | None
    headline: float | None
    headline_delta: float | None
    acc_norm: float | None
    gen_acc: float | None
    forward_passes: int
    forward_tokens: int
    wall_s: float


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, as measured."""

    name: str
    met: bool
    detail: str


@dataclass(frozen=True)
class BenchSettings:
    """What was run."""

    tasks: tuple[str, ...]
    arms: tuple[str, ...]
    iterations: int
    heldout: int
    seed: int
    model: str
    quick: bool


@dataclass(frozen=True)
class QualityReport:
    """Everything the benchmark prints, writes as JSON and logs to MLflow."""

    settings: BenchSettings
    machine: dict[str, Any]
    results: tuple[ArmResult, ...]
    summary: tuple[ArmSummary, ...]
    targets: tuple[Target, ...]


def build_report(settings: BenchSettings, machine: dict[str, Any], results: Sequence[ArmResult]) -> QualityReport:
    """Add the means over tasks and the targets to the per-task results."""
    arms = [a for a in settings.arms if any(r.arm == a for r in results)]
    return QualityReport(
        settings=settings,
        machine=machine,
        results=tuple(results),
        summary=tuple(summarize(results, a) for a in arms),
        targets=targets(results),
    )


def summarize(results: Sequence[ArmResult], arm: str) -> ArmSummary:
    """Means over the tasks `arm` ran on; costs are totals."""
    rows = [r for r in results if r.arm == arm]
    return ArmSummary(
        arm=arm,
        tasks=len(rows),
        loss=_mean(r.loss.value for r in rows),
        loss_delta=_mean(_estimate(r.loss) for r in rows),
        headline=_mean(r.headline.value for r in rows),
        headline_delta=_mean(_estimate(r.headline) for r in rows),
        acc_norm=_mean(r.acc_norm.value for r in rows),
        gen_acc=_mean(r.gen_acc.value for r in rows),
        forward_passes=sum(r.cost.forward_passes for r in rows),
        forward_tokens=sum(r.cost.forward_tokens for r in rows),
        wall_s=sum(r.cost.wall_s for r in rows),
    )


def targets(results: Sequence[ArmResult]) -> tuple[Target, ...]:
    """The issue's three targets for the PMPO-defaults arm."""
    return (_gain_target(results), _ape_target(results), _loss_target(results))


def _gain_target(results: Sequence[ArmResult]) -> Target:
    name = "PMPO acc_norm >= initial on 5 of 6 shared tasks, mean gain >= 3 points"
    rows = [r for r in results if r.arm == PMPO and r.shared and _estimate(r.headline) is not None]
    if not rows:
        return Target(name, False, "not measured: no shared task with the pmpo arm")
    gains = [_estimate(r.headline) for r in rows]
    wins, need = sum(g >= 0 for g in gains), math.ceil(WIN_SHARE * len(rows) - 1e-9)
    mean = sum(gains) / len(gains)
    detail = (
        f"{wins} of {len(rows)} shared tasks (need {need}), mean gain {100 * mean:+.1f} points "
        f"(need {100 * MIN_MEAN_GAIN:+.0f})"
    )
    return Target(name, wins >= need and mean >= MIN_MEAN_GAIN, detail)


def _ape_target(results: Sequence[ArmResult]) -> Target:
    name = "PMPO mean acc_norm >= APE's at <= 1/5 of its forward tokens"
    pmpo = {r.task: r for r in results if r.arm == PMPO}
    ape = {r.task: r for r in results if r.arm == "ape"}
    tasks = sorted(set(pmpo) & set(ape))
    if not tasks:
        return Target(name, False, "not measured: the pmpo and ape arms share no task")
    acc_p = _mean(pmpo[t].headline.value for t in tasks)
    acc_a = _mean(ape[t].headline.value for t in tasks)
    tok_p = sum(pmpo[t].cost.forward_tokens for t in tasks)
    tok_a = sum(ape[t].cost.forward_tokens for t in tasks)
    ratio = tok_p / tok_a if tok_a else math.inf
    detail = (
        f"acc_norm {acc_p:.3f} vs APE {acc_a:.3f} (mean over {len(tasks)} tasks); forward tokens "
        f"{tok_p:,} vs {tok_a:,} ({ratio:.2f}x, need <= {MAX_COMPUTE_RATIO:.2f}x)"
    )
    return Target(name, acc_p >= acc_a and ratio <= MAX_COMPUTE_RATIO, detail)


def _loss_target(results: Sequence[ArmResult]) -> Target:
    name = "PMPO held-out loss falls on every task"
    rows = [r for r in results if r.arm == PMPO and _estimate(r.loss) is not None]
    if not rows:
        return Target(name, False, "not measured: no task with the pmpo arm")
    falls = [r for r in rows if _estimate(r.loss) < 0]
    sure = [r for r in falls if r.loss.delta.high < 0]
    rest = [r.task for r in rows if r not in falls]
    detail = f"falls on {len(falls)} of {len(rows)} tasks ({len(sure)} with the interval below 0)"
    return Target(name, len(falls) == len(rows), detail + (f"; not on {', '.join(rest)}" if rest else ""))


def table(report: QualityReport) -> str:
    """Per task x arm rows, the means over tasks and the targets, as aligned text."""
    head = ["task", "arm", "loss", "acc", "acc_norm", "gen acc", "passes", "tokens", "wall s"]
    rows = [
        [
            r.task,
            r.arm,
            *(_cell(getattr(r, m)) for m in METRICS),
            f"{r.cost.forward_passes:,}",
            f"{r.cost.forward_tokens:,}",
            f"{r.cost.wall_s:.0f}",
        ]
        for r in report.results
    ]
    s = report.settings
    lines = [
        f"model {s.model}; {s.iterations} iteration(s); {s.heldout} held-out examples per task; seed {s.seed}"
        + (" (quick)" if s.quick else ""),
        "deltas: arm - initial on the same held-out examples, [95% paired bootstrap interval]",
        "",
        _aligned(head, rows),
        "",
        "means over tasks (acc_norm*: acc_norm where the task has options, else generation accuracy)",
        _aligned(
            ["arm", "tasks", "loss", "d loss", "acc_norm*", "d acc_norm*", "passes", "tokens", "wall s"],
            [
                [
                    a.arm,
                    str(a.tasks),
                    _num(a.loss),
                    _num(a.loss_delta, True),
                    _num(a.headline),
                    _num(a.headline_delta, True),
                    f"{a.forward_passes:,}",
                    f"{a.forward_tokens:,}",
                    f"{a.wall_s:.0f}",
                ]
                for a in report.summary
            ],
        ),
        "",
    ]
    lines += [f"{t.name}: {'met' if t.met else 'NOT met'} ({t.detail})" for t in report.targets]
    return "\n".join(lines)


def markdown(report: QualityReport) -> str:
    """The means over tasks as the README's Markdown table."""
    head = "| arm | held-out loss | d loss | acc_norm* | d acc_norm* | forward tokens | wall s |"
    rows = [
        f"| {a.arm} | {_num(a.loss)} | {_num(a.loss_delta, True)} | {_num(a.headline)} | "
        f"{_num(a.headline_delta, True)} | {a.forward_tokens:,} | {a.wall_s:.0f} |"
        for a in report.summary
    ]
    return "\n".join([head, "|" + "---|" * 7, *rows])


def to_json(report: QualityReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (forward tokens included)."""
    out = asdict(report)
    for row, result in zip(out["results"], report.results):
        row["cost"]["forward_tokens"] = result.cost.forward_tokens
        row["headline"] = asdict(result.headline)
    return out


def table_columns(report: QualityReport) -> dict[str, list]:
    """The per task x arm table as columns (for mlflow.log_table)."""
    cols: dict[str, list] = {"task": [], "arm": [], "prompt": [], "candidates": []}
    for r in report.results:
        cols["task"].append(r.task)
        cols["arm"].append(r.arm)
        cols["prompt"].append(r.prompt)
        cols["candidates"].append(r.candidates)
        for m in METRICS:
            measure = getattr(r, m)
            cols.setdefault(m, []).append(measure.value)
            for part in ("estimate", "low", "high"):
                cols.setdefault(f"{m}_delta_{part}", []).append(getattr(measure.delta, part, None))
        for key in (
            "forward_passes",
            "tokens_scored",
            "tokens_prefilled",
            "tokens_generated",
            "forward_tokens",
            "wall_s",
        ):
            cols.setdefault(key, []).append(getattr(r.cost, key))
    return cols


def _estimate(m: Measure) -> float | None:
    return m.delta.estimate if m.delta is not None else None


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _num(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _cell(m: Measure) -> str:
    if m.value is None:
        return "-"
    if m.delta is None:
        return f"{m.value:.3f}"
    return f"{m.value:.3f} {m.delta.estimate:+.3f} [{m.delta.low:+.3f}, {m.delta.high:+.3f}]"


def _aligned(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = [head, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines
    )
