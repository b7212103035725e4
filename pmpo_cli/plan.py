"""`--dry-run`: the cost plan as a table (one row per step, the totals, the wall-time estimate); no run is made."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from pmpo_cli.display import console


def show_plan(plan: Any, title: str) -> None:
    """The plan's steps, each with how often it runs, its model work in all those runs and its estimated seconds."""
    served = plan.served
    table = Table(title=f"{title}: cost plan (the most the run can do)", header_style="bold")
    columns = ["step", "runs", "forward passes", "tokens scored", "prefilled", "generated (budget)"]
    columns += ["requests"] if served else []
    columns += ["est. seconds", "cost model (each run)"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("step", "cost model (each run)") else "right")
    for s in plan.steps:
        w, seconds = s.work, plan.seconds(s)
        row = [s.label, str(s.runs), f"{w.forward_passes:,}", f"{w.tokens_scored:,}", f"{w.tokens_prefilled:,}"]
        row += [f"{w.tokens_generated:,}"] + ([f"{w.requests:,}"] if served else [])
        row += ["-" if seconds is None else f"{seconds:,.1f}", s.model]
        table.add_row(*row)
    w = plan.work
    total = ["total", "", f"{w.forward_passes:,}", f"{w.tokens_scored:,}", f"{w.tokens_prefilled:,}"]
    total += [f"{w.tokens_generated:,}"] + ([f"{w.requests:,}"] if served else [])
    total += ["-" if plan.total_seconds is None else f"{plan.total_seconds:,.1f}", ""]
    table.add_row(*total, style="bold")
    console.print(table)
    console.print(
        f"{plan.iterations} iterations x at most {plan.candidates} candidates on {plan.train_examples} training "
        f"examples; held-out: {plan.heldout_examples} examples. Tokens in all: {w.tokens:,} "
        "(the budget's max_tokens counts the same: scored + prefilled + generated)."
    )
    if plan.rates is not None:
        r, e, c, t = plan.rates, plan.expected_work, plan.expected_candidates, plan.expected_tokens
        kept = f" ({r.keep.kept} of its {r.keep.replies} replies were kept)" if r.keep else ""
        console.print(
            f"calibration: {1 / r.scored_token_s:,.0f} tokens/s scored, {r.rewrite_request_s:.1f} s per rewrite "
            f"request; its replies used {r.reply_fraction:.0%} of their budget and about {r.kept_fraction:.0%} "
            f"become candidates{kept}. Expected: {c.mean:,.0f} candidates (likely {c.low:,.0f}-{c.high:,.0f}), "
            f"{e.tokens:,} tokens (likely {t.low:,.0f}-{t.high:,.0f}; {e.tokens_scored:,} scored, "
            f"{e.tokens_prefilled:,} prefilled, {e.tokens_generated:,} generated); wall time of the model work "
            f"about {plan.total_seconds:,.0f} s (plus loading the model and starting Prefect and MLflow)."
        )
    console.print(
        "[dim]A maximum: patience may stop sooner, replies that fail to parse or repeat are never scored, a kept "
        "incumbent's masking is free. Nothing was run or recorded.[/dim]"
    )


def add_budget_options(p: argparse.ArgumentParser) -> None:
    """--dry-run, --max-tokens and --max-seconds (the `budget:` block)."""
    p.add_argument("--dry-run", action="store_true", help="print the run's cost plan and exit: no run is made")
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="stop at the next step once N tokens were scored, prefilled or generated (a rerun goes on)",
    )
    p.add_argument("--max-seconds", type=float, metavar="S", help="stop at the next step once the loop ran S seconds")
