"""The plots logged to MLflow: loss by iteration at the end of a run, held-out loss by prompt version in a
comparison (matplotlib, headless)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from pmpo.loop.result import Candidate, Iteration  # noqa: E402


def loss_by_iteration(candidates: Sequence[Candidate], iterations: Sequence[Iteration], initial_loss: float):
    """Every candidate's training loss by iteration, and the incumbent's loss as a step line."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for origin, marker in (("rewrite", "o"), ("segment_removal", "s"), ("demonstrations", "D"), ("initial", "*")):
        points = [(c.iteration, c.loss) for c in candidates if c.origin == origin]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=marker, alpha=0.6, label=origin.replace("_", " "))
    steps = [0, *(it.iteration for it in iterations)]
    incumbent = [initial_loss, *(it.incumbent_loss for it in iterations)]
    ax.step(steps, incumbent, where="post", color="black", label="incumbent")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (mean summed target CE, nats)")
    ax.set_xticks(steps)
    ax.legend(loc="best", fontsize="small")
    ax.set_title("PMPO: loss by iteration")
    fig.tight_layout()
    return fig


def losses_by_version(labels: Sequence[str], losses: Sequence[float], accuracies: Sequence[float | None]):
    """Held-out loss of each prompt version as a bar, with its accuracy written on it when there is one."""
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(labels)), 4), dpi=100)
    bars = ax.bar(range(len(labels)), losses, color="tab:blue")
    for bar, acc in zip(bars, accuracies):
        if acc is not None:
            ax.annotate(
                f"acc {acc:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom"
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("held-out loss (mean summed target CE, nats)")
    ax.set_title("prompt versions on the same held-out examples (lower is better)")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Free a figure's memory (pyplot keeps every open figure)."""
    plt.close(fig)
