"""What an optimisation leaves in MLflow, driven by the loop's callbacks (the loop never sees MLflow).

Resume-safe: an iteration whose record is already in the run (a killed run, continued) is replayed from the
task cache without being logged again, and the candidates table is always rewritten whole.
"""

from __future__ import annotations

import json
from typing import Any

from pmpo.evaluation.heldout import Evaluation, compare
from pmpo.loop.result import Candidate, Iteration, OptimizeResult
from pmpo.models.usage import Cost
from tasks import plots
from tasks.mlflow import links, prompts, runs, writes
from tasks.mlflow.runs import TrackedRun


class Recorder:
    """The `on_candidate` / `on_iteration` observer that writes one run's record."""

    def __init__(self, run: TrackedRun):
        self.run = run
        self.candidates: list[Candidate] = []
        self.selected: set[str] = set()  # ids that were the incumbent after some iteration (and the initial)

    def candidate(self, c: Candidate) -> None:
        """Collect a candidate; the initial one is iteration 0's whole record."""
        self.candidates.append(c)
        if c.origin == "initial":
            self.selected.add(c.id)
            if self._new(0):
                writes.log_candidates(self.run, self.candidates, self.selected)
                writes.log_metrics(self.run, {runs.STEP_METRIC: c.loss}, step=0)

    def iteration(self, it: Iteration) -> None:
        """After an iteration: the whole candidates table, then the iteration's metrics and masking table."""
        self.selected.add(it.incumbent_id)
        if self._new(it.iteration):
            writes.log_candidates(self.run, self.candidates, self.selected)
            writes.log_iteration(self.run, it, n_total=len(self.candidates))

    def finish(
        self,
        result: OptimizeResult,
        task: str,
        heldout: tuple[Evaluation, Evaluation] | None,
        register: bool,
        cost: Cost | None = None,
        placement: str = "",
        model_config: dict | None = None,
    ) -> tuple[str | None, int | None]:
        """Final metrics (`cost`: the run's total), plot, prompts and the Prompt Registry entry; returns (name, version).

        `placement`: where the prompt went in the model's input (pmpo.text.rendering.placed), tagged on the version;
        `model_config`: the version's MLflow model config (the scoring model and the placement)."""
        run = self.run
        writes.log_candidates(run, result.candidates, self.selected)
        metrics: dict[str, float] = {
            "initial_loss": result.initial.loss,
            "best_loss": result.best.loss,
            "best_loss_per_token": result.best.loss_per_token,
            "n_candidates_total": len(result.candidates),
        }
        if heldout is not None:
            metrics.update(heldout_metrics(*heldout, seed=result.seed))
        if cost is not None:
            metrics.update(writes.cost_metrics(cost, "total"))
        writes.log_metrics(run, metrics, step=len(result.iterations))
        fig = plots.loss_by_iteration(result.candidates, result.iterations, result.initial.loss)
        try:
            writes.log_figure(run, fig, "loss_by_iteration.png")
        finally:
            plots.close(fig)
        writes.log_text(run, result.initial.prompt, "prompts/initial.txt")
        writes.log_text(run, result.best.prompt, "prompts/best.txt")
        links.describe(run, description(result, metrics))
        return self._register(result, task, placement, model_config) if register else (None, None)

    def _register(
        self, result: OptimizeResult, task: str, placement: str, model_config: dict | None
    ) -> tuple[str, int]:
        tags = runs.run_tags(self.run.run_id)
        if "pmpo.prompt_version" in tags:  # registered before a crash: a second version would be a duplicate
            name, version = tags["pmpo.prompt_name"], int(tags["pmpo.prompt_version"])
        else:
            name, version = prompts.register_prompt(
                task, result.best.prompt, result.best.loss, self.run, placement, model_config
            )
            runs.set_tags(self.run, {"pmpo.prompt_name": name, "pmpo.prompt_version": str(version)})
        links.link_version(self.run.run_id, name, version)  # linking twice is harmless: MLflow keeps one link
        return name, version

    def _new(self, iteration: int) -> bool:
        return iteration > self.run.logged_through


def description(result: OptimizeResult, metrics: dict[str, float]) -> str:
    """The run's description (Markdown): initial -> best prompt, and the held-out change with its interval."""
    changed = "unchanged: no candidate beat the initial prompt" if result.best.id == result.initial.id else "improved"
    lines = [
        f"PMPO: training loss {result.initial.loss:.4f} -> {result.best.loss:.4f} ({changed}), "
        f"{len(result.iterations)} iterations, {len(result.candidates)} candidates.",
        "",
        "**Initial prompt**",
        "",
        _quoted(result.initial.prompt),
        "",
        "**Best prompt**",
        "",
        _quoted(result.best.prompt),
    ]
    if "heldout/delta_loss" in metrics:
        n = int(metrics["heldout/n_examples"])
        lines += [
            "",
            f"Held-out ({n} examples): loss {metrics['heldout/loss_initial']:.4f} -> {metrics['heldout/loss_final']:.4f}, "
            f"change {metrics['heldout/delta_loss']:+.4f} (95% interval {metrics['heldout/delta_loss_low']:+.4f} to "
            f"{metrics['heldout/delta_loss_high']:+.4f}).",
        ]
        if "heldout/delta_accuracy" in metrics:
            lines.append(
                f"Accuracy change {metrics['heldout/delta_accuracy']:+.3f} (95% interval "
                f"{metrics['heldout/delta_accuracy_low']:+.3f} to {metrics['heldout/delta_accuracy_high']:+.3f})."
            )
    return "\n".join(lines)


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def heldout_metrics(initial: Evaluation, final: Evaluation, *, seed: int = 0) -> dict[str, float]:
    """Held-out loss and accuracies of the initial and the final prompt, and each change (final - initial)
    with its paired bootstrap 95% interval (`heldout/delta_<name>`, `..._low`, `..._high`)."""
    out: dict[str, float] = {"heldout/n_examples": initial.n_examples}
    for which, e in (("initial", initial), ("final", final)):
        out[f"heldout/loss_{which}"] = e.loss
        out[f"heldout/loss_per_token_{which}"] = e.loss_per_token
        for name in ("accuracy", "option_accuracy", "option_accuracy_norm"):
            if (value := getattr(e, name)) is not None:
                out[f"heldout/{name}_{which}"] = value
    delta = compare(initial, final, seed=seed)
    for name in ("loss", "accuracy", "option_accuracy", "option_accuracy_norm"):
        if (interval := getattr(delta, name)) is not None:
            out[f"heldout/delta_{name}"] = interval.estimate
            out[f"heldout/delta_{name}_low"] = interval.low
            out[f"heldout/delta_{name}_high"] = interval.high
    return out


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "columns":
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out
