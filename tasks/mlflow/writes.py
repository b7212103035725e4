"""What a run records: metrics by step, an iteration's metrics and masking table, the candidates table
(rewritten whole, never appended: a resumed run must not duplicate rows), figures and text artifacts."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any, Sequence

from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from pmpo.loop.result import Candidate, Iteration, SegmentEffect
from pmpo.models.usage import STEPS, Cost
from tasks.mlflow.runs import STEP_METRIC, TrackedRun
from tasks.mlflow.store import client

CANDIDATES_FILE = "candidates.json"
_METRIC_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]+")


def log_metrics(run: TrackedRun, metrics: dict[str, float], step: int) -> None:
    """Log metrics at `step` (finite values only: MLflow stores inf badly and a chart cannot show it)."""
    now = int(time.time() * 1000)
    items = [Metric(_METRIC_NAME_BAD.sub("_", k), float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
    client().log_batch(run.run_id, metrics=items)


def log_iteration(run: TrackedRun, it: Iteration, n_total: int) -> None:
    """An iteration's metrics and masking table; the incumbent loss goes last as the 'recorded' marker."""
    if it.segments:
        write_table(run, f"masking/iter_{it.iteration:03d}.json", masking_columns(it.segments))
    metrics = {
        "best_candidate_loss": it.best_candidate_loss,
        "n_candidates": it.n_candidates,
        "n_candidates_total": n_total,
        "n_dropped": it.n_dropped,
        "improved": float(it.improved),
        **{f"rejected/{reason}": count for reason, count in it.rejected.items()},
        **cost_metrics(it.cost),
    }
    log_metrics(run, metrics, it.iteration)
    log_metrics(run, {STEP_METRIC: it.incumbent_loss}, it.iteration)


def cost_metrics(cost: Cost, scope: str = "") -> dict[str, float]:
    """`cost/tokens_scored`, `time/loss_s`, ... of a span; a `scope` ("total") keeps run totals apart."""
    suffix = f"_{scope}" if scope else ""
    u = cost.usage
    metrics = {
        f"cost{suffix}/forward_passes": u.forward_passes,
        f"cost{suffix}/tokens_scored": u.tokens_scored,
        f"cost{suffix}/tokens_generated": u.tokens_generated,
        f"cost{suffix}/tokens_prefilled": u.tokens_prefilled,
        f"time{suffix}/wall_s": cost.seconds,
    }
    return metrics | {f"time{suffix}/{s}_s": cost.step(s).seconds for s in STEPS}


def masking_columns(effects: Sequence[SegmentEffect]) -> dict[str, list]:
    """The masking table: dL of removing each unit (negative: the unit hurts)."""
    return {
        "index": [e.index for e in effects],
        "unit": [e.text for e in effects],
        "delta_loss": [e.delta_loss for e in effects],
        "se": [e.se for e in effects],  # paired standard error of delta_loss: a removal must clear it
    }


def candidate_columns(candidates: Sequence[Candidate], selected: set[str]) -> dict[str, list]:
    """The candidates table, one row per candidate; `selected`: it was the incumbent after its iteration."""
    return {
        "id": [c.id for c in candidates],
        "parent": [c.parent_id for c in candidates],
        "iteration": [c.iteration for c in candidates],
        "origin": [c.origin for c in candidates],
        "prompt": [c.prompt for c in candidates],
        "loss_sum": [c.loss * c.n_examples for c in candidates],  # summed over the training examples
        "loss_mean": [c.loss for c in candidates],  # the objective: mean over examples of summed target CE
        "loss_per_token": [c.loss_per_token for c in candidates],
        "n_examples": [c.n_examples for c in candidates],
        "dropped": [c.dropped for c in candidates],  # racing stopped it after n_examples: loss is over those only
        "selected": [c.id in selected for c in candidates],
        # What the selection gate weighed, so a refused candidate can be read off the table (docs/usage.md).
        "gap_se": [c.gap_se for c in candidates],
        "tempered_gap": [c.tempered_gap for c in candidates],
        "tempered_gap_se": [c.tempered_gap_se for c in candidates],
        "accuracy": [c.accuracy for c in candidates],
        "accuracy_norm": [c.accuracy_norm for c in candidates],
    }


def log_candidates(run: TrackedRun, candidates: Sequence[Candidate], selected: set[str]) -> None:
    """Rewrite the whole candidates table (never appended to: a resumed run must not duplicate rows)."""
    write_table(run, CANDIDATES_FILE, candidate_columns(candidates, selected))


def write_table(run: TrackedRun, artifact_file: str, columns: dict[str, list]) -> None:
    """Write a table artifact, replacing any earlier version.

    `MlflowClient.log_table` appends to an existing file; we write the same JSON ('split' orient) with
    log_text, which replaces it, and register the file as a table the way log_table does, for the UI.
    """
    c = client()
    names = list(columns)
    rows = [list(row) for row in zip(*(columns[n] for n in names))]
    c.log_text(run.run_id, json.dumps({"columns": names, "data": rows}), artifact_file)
    tags = c.get_run(run.run_id).data.tags
    logged = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        c.set_tag(run.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def log_figure(run: TrackedRun, figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as a PNG artifact."""
    client().log_figure(run.run_id, figure, artifact_file)


def log_text(run: TrackedRun, text: str, artifact_file: str) -> None:
    """Save a text artifact (replaces an earlier one)."""
    client().log_text(run.run_id, text, artifact_file)
