"""The quality benchmark's MLflow record: one run in experiment `pmpo-quality` with table, plot and summary."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")  # no display on a benchmark machine

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from quality_report import INITIAL, QualityReport, table_columns, to_json  # noqa: E402

EXPERIMENT = "pmpo-quality"


def plot(report: QualityReport) -> Figure:
    """acc_norm (generation accuracy where a task has no options) minus the initial's, per task and arm."""
    arms = [a.arm for a in report.summary if a.arm != INITIAL]
    tasks = list(dict.fromkeys(r.task for r in report.results))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.5))
    width = 0.8 / max(1, len(arms))
    for k, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, task in enumerate(tasks):
            row = next((r for r in report.results if r.task == task and r.arm == arm), None)
            delta = row.headline.delta if row is not None else None
            if delta is None:
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(100 * delta.estimate)
            lo.append(100 * (delta.estimate - delta.low))
            hi.append(100 * (delta.high - delta.estimate))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=arm)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)), [t.removeprefix("builtin:") for t in tasks], rotation=30, ha="right")
    ax.set_ylabel("acc_norm - initial (points, 95% CI)")
    ax.set_title(f"Held-out accuracy gain over the initial prompt ({report.settings.model})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def summary_metrics(report: QualityReport) -> dict[str, float]:
    """Means over tasks per arm, and each target as 1 (met) or 0, named for MLflow."""
    metrics: dict[str, float] = {}
    for a in report.summary:
        for key in ("loss", "loss_delta", "headline", "headline_delta", "forward_tokens", "forward_passes", "wall_s"):
            value = getattr(a, key)
            if value is not None:
                metrics[f"{a.arm}.{key.replace('headline', 'acc_norm')}"] = float(value)
    for i, t in enumerate(report.targets, start=1):
        metrics[f"target{i}_met"] = float(t.met)
    return metrics


def log_run(report: QualityReport, tracking_uri: str) -> str:
    """Log the report as one MLflow run and return its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    s = report.settings
    with mlflow.start_run(run_name=f"quality-{len(s.tasks)}tasks-{s.iterations}it") as run:
        mlflow.log_params(
            {
                "tasks": ",".join(s.tasks),
                "arms": ",".join(s.arms),
                "iterations": s.iterations,
                "heldout": s.heldout,
                "seed": s.seed,
                "model": s.model,
                "quick": s.quick,
            }
        )
        mlflow.log_metrics({_metric_name(k): v for k, v in summary_metrics(report).items()})
        mlflow.log_table(data=table_columns(report), artifact_file="quality_table.json")
        mlflow.log_dict(to_json(report), "quality_report.json")
        fig = plot(report)
        mlflow.log_figure(fig, "acc_norm_delta.png")
        plt.close(fig)
        for i, t in enumerate(report.targets, start=1):
            mlflow.set_tag(f"target{i}", f"{'met' if t.met else 'NOT met'}: {t.name} ({t.detail})"[:5000])
        return run.info.run_id


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", name)
