"""The quality benchmark's results: per task and arm, means over tasks, the issue's targets, table and JSON.

Accuracy intervals are `pmpo.evaluation.stats.Interval`s (estimate, low, high) of the paired difference arm - initial on
the same held-out examples. Tasks without options have no acc / acc_norm; their *headline accuracy* (what the
targets call acc_norm) is the generation accuracy instead, so every task counts toward the targets. Each row keeps its
per-example differences, so the means over tasks carry a pooled interval (a paired bootstrap that resamples within
each task) and a report can be rebuilt from its JSON and resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from pmpo.evaluation.stats import Interval

INITIAL = "initial"
PMPO = "pmpo"
# The arms that compare with PMPO's defaults in the targets: what a user would pick instead.
PEERS = ("ape", "train_acc", "gepa")
ARMS = (
    INITIAL,
    PMPO,
    "pmpo_strict",
    "pmpo_demos",
    "pmpo_no_masking",
    "pmpo_ce",
    "pmpo_racing",
    "pmpo_more_train",
    "pmpo_z2",
    "pmpo_n8",
    "train_acc",
    "ape",
    "gepa",
)
METRICS = ("loss", "acc", "acc_norm", "gen_acc")
# Issue 19's targets on the six BIG-bench samples: mean acc and acc_norm each +3 points or more with the pooled 95%
# interval above zero; no task loses more than 2 points; held-out loss lower on every task; PMPO's mean at least
# each peer's at no more forward tokens.
MIN_MEAN_GAIN = 0.03
MAX_TASK_LOSS = 0.02


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
class PoolEntry:
    """One prompt a PMPO arm scored: what the selection-by-training-accuracy arm chooses among."""

    prompt: str
    loss: float
    accuracy: float | None  # multiple choice: training acc from the loss's own passes


@dataclass(frozen=True)
class ExampleDiffs:
    """Per held-out example, arm - initial: the pooled intervals resample these within each task."""

    loss: tuple[float, ...]
    acc: tuple[float, ...]  # acc where the task has options, else generation accuracy
    acc_norm: tuple[float, ...]  # acc_norm where the task has options, else generation accuracy


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
    diffs: ExampleDiffs | None = None  # None for the initial arm
    pool: tuple[PoolEntry, ...] = ()  # PMPO arms: every candidate scored

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
    # Over the shared (BIG-bench) tasks, arm - initial, pooled over their held-out examples.
    pooled_acc: Interval | None = None
    pooled_acc_norm: Interval | None = None
    pooled_loss: Interval | None = None


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
    """Means over the tasks `arm` ran on; costs are totals; pooled intervals over the shared tasks."""
    rows = [r for r in results if r.arm == arm]
    shared = [r.diffs for r in rows if r.shared and r.diffs is not None]
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
        pooled_acc=pooled_interval([d.acc for d in shared]),
        pooled_acc_norm=pooled_interval([d.acc_norm for d in shared]),
        pooled_loss=pooled_interval([d.loss for d in shared]),
    )


def pooled_interval(
    groups: Sequence[Sequence[float]], *, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Interval | None:
    """Mean of all per-example differences pooled over tasks, with a bootstrap interval resampling within each task.

    Resampling within a task keeps each task's share of the pool fixed, as the benchmark drew it; pmpo's
    `paired_bootstrap` is the one-task case.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    total = sum(g.size for g in groups)
    sums = np.zeros(n_resamples)
    for g in groups:
        sums += g[rng.integers(0, g.size, size=(n_resamples, g.size))].sum(axis=1)  # [R]
    means = sums / total
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    estimate = float(sum(g.sum() for g in groups) / total)
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate))


def targets(results: Sequence[ArmResult]) -> tuple[Target, ...]:
    """Issue 19's targets for the PMPO-defaults arm, on the shared tasks."""
    shared = [r for r in results if r.shared]
    return (
        _gain_target(shared, "acc"),
        _gain_target(shared, "acc_norm"),
        _no_task_loses(shared),
        _loss_target(shared),
        *(_peer_target(shared, peer) for peer in PEERS),
    )


def _gain_target(results: Sequence[ArmResult], metric: str) -> Target:
    name = f"PMPO mean {metric} +{100 * MIN_MEAN_GAIN:.0f} points or more, pooled 95% interval above 0"
    pooled = summarize(results, PMPO)
    interval = pooled.pooled_acc if metric == "acc" else pooled.pooled_acc_norm
    if interval is None:
        return Target(name, False, "not measured: no shared task with the pmpo arm")
    detail = (
        f"{100 * interval.estimate:+.1f} points [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}] "
        f"over {pooled.tasks} task(s)"
    )
    return Target(name, interval.estimate >= MIN_MEAN_GAIN and interval.low > 0, detail)


def _no_task_loses(results: Sequence[ArmResult]) -> Target:
    name = f"no task loses more than {100 * MAX_TASK_LOSS:.0f} points (acc and acc_norm)"
    rows = [r for r in results if r.arm == PMPO and r.diffs is not None]
    if not rows:
        return Target(name, False, "not measured: no shared task with the pmpo arm")
    worst = {r.task: min(np.mean(r.diffs.acc), np.mean(r.diffs.acc_norm)) for r in rows}
    losers = [f"{t} {100 * w:+.1f}" for t, w in worst.items() if w < -MAX_TASK_LOSS - 1e-9]
    detail = f"worst {min(worst.values()) * 100:+.1f} points over {len(rows)} task(s)"
    return Target(name, not losers, detail + (f"; losing: {', '.join(losers)}" if losers else ""))


def _peer_target(results: Sequence[ArmResult], peer: str) -> Target:
    name = f"PMPO mean acc_norm >= {peer}'s at no more forward tokens"
    pmpo = {r.task: r for r in results if r.arm == PMPO}
    other = {r.task: r for r in results if r.arm == peer}
    tasks = sorted(set(pmpo) & set(other))
    if not tasks:
        return Target(name, False, f"not measured: the pmpo and {peer} arms share no task")
    acc_p = _mean(pmpo[t].headline.value for t in tasks)
    acc_o = _mean(other[t].headline.value for t in tasks)
    tok_p = sum(pmpo[t].cost.forward_tokens for t in tasks)
    tok_o = sum(other[t].cost.forward_tokens for t in tasks)
    detail = (
        f"acc_norm {acc_p:.3f} vs {acc_o:.3f} (mean over {len(tasks)} tasks); forward tokens {tok_p:,} vs {tok_o:,}"
    )
    return Target(name, acc_p >= acc_o and tok_p <= tok_o, detail)


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
        "means over tasks (acc_norm*: acc_norm where the task has options, else generation accuracy);"
        " pooled: arm - initial over the shared tasks' held-out examples [95% interval, resampled within tasks]",
        _aligned(
            ["arm", "tasks", "loss", "d loss", "acc_norm*", "d acc_norm*", "pooled d acc", "pooled d acc_norm"]
            + ["passes", "tokens", "wall s"],
            [
                [
                    a.arm,
                    str(a.tasks),
                    _num(a.loss),
                    _num(a.loss_delta, True),
                    _num(a.headline),
                    _num(a.headline_delta, True),
                    _interval(a.pooled_acc),
                    _interval(a.pooled_acc_norm),
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
    """The means over tasks as the docs' Markdown table."""
    head = (
        "| arm | tasks | held-out loss | d loss | acc_norm* | d acc_norm* | pooled d acc | pooled d acc_norm "
        "| forward tokens | wall s |"
    )
    rows = [
        f"| {a.arm} | {a.tasks} | {_num(a.loss)} | {_num(a.loss_delta, True)} | {_num(a.headline)} | "
        f"{_num(a.headline_delta, True)} | {_interval(a.pooled_acc)} | {_interval(a.pooled_acc_norm)} | "
        f"{a.forward_tokens:,} | {a.wall_s:.0f} |"
        for a in report.summary
    ]
    return "\n".join([head, "|" + "---|" * 10, *rows])


def to_json(report: QualityReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (forward tokens included)."""
    out = asdict(report)
    for row, result in zip(out["results"], report.results):
        row["cost"]["forward_tokens"] = result.cost.forward_tokens
        row["headline"] = asdict(result.headline)
    return out


def results_from_json(data: dict[str, Any]) -> list[ArmResult]:
    """The per task x arm rows of a report written by `to_json`: what a resumed run keeps."""

    def interval(d):
        return None if d is None else Interval(d["estimate"], d["low"], d["high"])

    def measure(d):
        return Measure(d["value"], interval(d["delta"]))

    rows = []
    for d in data["results"]:
        cost = {f.name: d["cost"][f.name] for f in fields(Cost) if f.name in d["cost"]}
        diffs = d.get("diffs")
        rows.append(
            ArmResult(
                task=d["task"],
                shared=d["shared"],
                arm=d["arm"],
                prompt=d["prompt"],
                candidates=d["candidates"],
                loss=measure(d["loss"]),
                acc=measure(d["acc"]),
                acc_norm=measure(d["acc_norm"]),
                gen_acc=measure(d["gen_acc"]),
                cost=Cost(**cost),
                diffs=None if diffs is None else ExampleDiffs(**{k: tuple(v) for k, v in diffs.items()}),
                pool=tuple(PoolEntry(**e) for e in d.get("pool", ())),
            )
        )
    return rows


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


def _interval(i: Interval | None) -> str:
    return "-" if i is None else f"{100 * i.estimate:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}]"


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
