"""What the CLI shows: live progress of each step, and tables of results, runs and candidates (rich)."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.progress import Event, listening

console = Console()
if not console.is_terminal:  # piped or captured: no terminal width to respect, and ids must stay whole
    console.width = 160
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


@contextlib.contextmanager
def live_progress() -> Iterator[None]:
    """Show a bar per running step and a line per finished one while the block runs."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    bars: dict[str, Any] = {}
    started: dict[str, float] = {}

    def on_event(e: Event) -> None:
        if e.kind == "note":
            progress.console.print(f"[bold]{e.label}[/bold]")
        elif e.kind == "start":
            started[e.label] = time.monotonic()
            bars[e.label] = progress.add_task(e.label, total=None)
        elif e.kind == "advance" and e.label in bars:
            progress.update(bars[e.label], completed=e.completed, total=e.total)
        elif e.kind == "done" and e.label in bars:
            progress.remove_task(bars.pop(e.label))
            took = time.monotonic() - started.pop(e.label, time.monotonic())
            how = "[dim]cached[/dim]" if e.cached else f"{took:.1f}s"
            progress.console.print(f"  [green]✓[/green] {e.label}  {how}")

    with progress, listening(on_event):
        yield


def optimize_summary(s: Any) -> None:
    """The end-of-run table: training and held-out loss, accuracy, the prompt, and where the record is."""
    table = Table(title=f"PMPO on {s.task}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("initial", justify="right")
    table.add_column("best / final", justify="right")
    table.add_column("change [95% CI]", justify="right")
    table.add_row("training loss (nats, mean per example)", f"{s.initial_loss:.4f}", f"{s.best_loss:.4f}", "")
    if s.heldout is not None:
        for row in heldout_rows(s.heldout):
            table.add_row(*row)
    console.print(table)
    if s.heldout is not None and s.heldout.delta_loss is not None:
        console.print("[dim]change: final - initial on the same held-out examples, paired bootstrap 95% interval[/dim]")
    console.print(f"[bold]initial prompt:[/bold] {s.initial_prompt}", soft_wrap=True)
    console.print(f"[bold]best prompt:[/bold]    {s.best_prompt}", soft_wrap=True)
    dropped = sum(c.dropped for c in s.candidates)
    raced = f", {dropped} dropped early by racing" if dropped else ""
    stopped = ", stopped early (patience: nothing accepted)" if getattr(s, "stopped_early", False) else ""
    if getattr(s, "stop_reason", "") == "budget":
        stopped = ", stopped on budget (run it again with a larger budget to go on from the cache)"
    console.print(
        f"{s.n_candidates} candidates over {s.n_iterations} iterations{raced}{stopped}"
        + (" (resumed run)" if s.resumed else "")
    )
    rejected = getattr(s, "rejected", None)
    if rejected:  # e.g. copies_example: rewrites that quoted the hard example
        console.print("rewrites rejected: " + ", ".join(f"{reason} {n}" for reason, n in rejected.items()))
    writer = getattr(s, "rewriter_identity", None)
    if writer and writer != s.model_identity:  # only when another model wrote the rewrites
        console.print(f"rewrites by {writer}")
    if getattr(s, "cost", None) is not None:
        cost_table(s.cost)
    if s.prompt_version is not None:
        console.print(f"registered: prompts:/{s.prompt_name}/{s.prompt_version} (also prompts:/{s.prompt_name}@latest)")
    console.print(f"MLflow run {s.run_id} in experiment {s.experiment!r}")
    _where(s.tracking_uri, s.run_url_path)


def heldout_rows(h: Any) -> list[tuple[str, str, str, str]]:
    """(label, initial, final, change with interval) for held-out loss and each accuracy that was measured."""
    loss = (f"{h.initial_loss:.4f}", f"{h.final_loss:.4f}", _loss_change(h.delta_loss))
    rows = [(f"held-out loss ({h.n_examples} examples)", *loss)]
    for label, name in (
        ("held-out accuracy", "accuracy"),
        ("held-out option accuracy (acc)", "option_accuracy"),
        ("held-out option accuracy per byte (acc_norm)", "option_accuracy_norm"),
    ):
        initial, final = getattr(h, f"initial_{name}"), getattr(h, f"final_{name}")
        if initial is not None and final is not None:
            rows.append((label, f"{initial:.1%}", f"{final:.1%}", _points_change(getattr(h, f"delta_{name}"))))
    return rows


def _loss_change(d: Any) -> str:
    return "" if d is None else f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def _points_change(d: Any) -> str:
    # Accuracy changes read as percentage points, the unit people compare prompts in.
    return "" if d is None else f"{100 * d.estimate:+.1f} pts [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def cost_table(cost: Any) -> None:
    """What the run cost (flows.cost.CostSummary): seconds per step and model work, per iteration and in total."""
    table = Table(title="cost (this process; cached steps compute nothing)", header_style="bold")
    table.add_column("")
    for col in (
        "wall s",
        "mask s",
        "rewrite s",
        "loss s",
        "select s",
        "eval s",
        "passes",
        "scored tok",
        "prefill tok",
        "gen tok",
    ):
        table.add_column(col, justify="right")
    rows = [("initial", cost.initial)] + [(f"iter {i}", row) for i, row in enumerate(cost.iterations, start=1)]
    if cost.heldout is not None:
        rows.append(("held-out", cost.heldout))
    for label, row in [*rows, ("total", cost.total)]:
        seconds = [f"{row.steps[step].seconds:.1f}" for step in ("mask", "rewrite", "loss", "select", "evaluate")]
        table.add_row(
            f"[bold]{label}[/bold]" if label == "total" else label,
            f"{row.seconds:.1f}",
            *seconds,
            f"{row.forward_passes:,}",
            f"{row.tokens_scored:,}",
            f"{row.tokens_prefilled:,}",
            f"{row.tokens_generated:,}",
        )
    console.print(table)


def evaluate_summary(s: Any) -> None:
    """One prompt's held-out numbers."""
    table = Table(title=f"{s.dataset}: held-out evaluation", header_style="bold")
    columns = {"examples": str(s.n_examples), "loss": f"{s.loss:.4f}", "loss / token": f"{s.loss_per_token:.4f}"}
    columns["accuracy"] = "-" if s.accuracy is None else f"{s.accuracy:.1%}"
    if s.option_accuracy is not None:
        columns["option acc"] = f"{s.option_accuracy:.1%}"
    if s.option_accuracy_norm is not None:
        columns["option acc_norm"] = f"{s.option_accuracy_norm:.1%}"
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*columns.values())
    console.print(table)
    console.print(f"[bold]prompt[/bold] ({s.prompt_source if s.prompt_source != s.prompt else 'as given'}): {s.prompt}")
    if getattr(s, "cost", None) is not None:
        c = s.cost
        console.print(
            f"cost: {c.seconds:.1f} s, {c.forward_passes:,} forward passes, "
            f"{c.tokens_scored:,} tokens scored, {c.tokens_prefilled:,} prefilled, {c.tokens_generated:,} generated"
        )


def runs_table(runs: list[dict[str, Any]], ui_command: str) -> None:
    """Recent runs."""
    if not runs:
        console.print("no pmpo runs recorded yet: run `pmpo optimize`")
        return
    table = Table(header_style="bold")
    table.add_column("run", no_wrap=True)
    for col in ("experiment", "name", "status", "started", "initial", "best", "cands", "held-out acc"):
        table.add_column(col)
    for r in runs:
        started = datetime.fromtimestamp(r["start_time"] / 1000).strftime("%Y-%m-%d %H:%M")
        acc = "-" if r["heldout_accuracy"] is None else f"{r['heldout_accuracy']:.1%}"
        table.add_row(
            r["run_id"],
            r["experiment"],
            r["name"] or "",
            r["status"],
            started,
            _num(r["initial_loss"]),
            _num(r["best_loss"]),
            _num(r["n_candidates"], "{:.0f}"),
            acc,
        )
    console.print(table)
    console.print(f"browse: {ui_command}")


def candidates_table(run_id: str, rows: list[dict[str, Any]], width: int) -> None:
    """A run's candidates in the order they were made; * marks the incumbents."""
    if not rows:
        console.print(f"run {run_id} has no candidates table yet")
        return
    table = Table(title=f"run {run_id}: {len(rows)} candidates", header_style="bold")
    for col in ("", "iter", "id", "parent", "origin", "loss", "loss/token"):
        table.add_column(col, no_wrap=True)
    table.add_column("prompt")
    for r in rows:
        prompt = r["prompt"] if len(r["prompt"]) <= width else r["prompt"][: width - 1] + "…"
        table.add_row(
            "*" if r["selected"] else "",
            str(r["iteration"]),
            r["id"],
            r["parent"] or "",
            r["origin"],
            _loss_cell(r),
            f"{r['loss_per_token']:.4f}",
            prompt,
        )
    console.print(table)


def _loss_cell(row: dict[str, Any]) -> str:
    # A candidate racing dropped has a loss over its first examples only: say so beside the number.
    loss = f"{row['loss_mean']:.4f}"
    return f"{loss} (dropped at {row['n_examples']} ex)" if row.get("dropped") else loss


def _where(tracking_uri: str, url_path: str) -> None:
    if tracking_uri.startswith("sqlite:"):
        console.print(f"open the record: [bold]mlflow ui --backend-store-uri {tracking_uri}[/bold]", soft_wrap=True)
        console.print(f"then: {MLFLOW_UI}/{url_path}", soft_wrap=True)
    else:
        console.print(f"open the record: {tracking_uri.rstrip('/')}/{url_path}", soft_wrap=True)
    console.print("flow runs: [bold]prefect server start[/bold], then http://127.0.0.1:4200")


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)
