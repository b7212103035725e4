"""The operations subcommands: `pmpo serve` (local Prefect + MLflow servers and the deployments), `pmpo nightly`
(the nightly refresh, once, by hand) and `pmpo compare` (prompt versions on the same held-out data)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from rich.table import Table
from rich.text import Text

COMMANDS = ("serve", "nightly", "compare")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the subcommands on the `pmpo` parser."""
    from deployments.serve import DEFAULT_CRON, DEFAULT_TIMEZONE, EXAMPLE_PROMPTS

    serve = sub.add_parser("serve", help="run a Prefect server, an MLflow server and the deployments on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="interface the servers listen on (default 127.0.0.1)")
    serve.add_argument("--prefect-port", type=int, default=4200, help="Prefect server and UI (default 4200)")
    serve.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server and UI (default 5000)")
    serve.add_argument(
        "--prompts", default=str(EXAMPLE_PROMPTS), metavar="FILE", help="managed prompts of the nightly refresh"
    )
    serve.add_argument("--cron", default=DEFAULT_CRON, help=f"nightly refresh schedule (default {DEFAULT_CRON!r})")
    serve.add_argument("--timezone", default=DEFAULT_TIMEZONE, help=f"schedule time zone (default {DEFAULT_TIMEZONE})")
    serve.add_argument(
        "--db",
        metavar="URL",
        help="postgresql://user@host:port/db: both servers' records on PostgreSQL "
        "(databases <db>_mlflow, <db>_prefect; default $PMPO_DB_URL, else SQLite under PMPO_HOME)",
    )
    serve.add_argument(
        "--servers-only",
        action="store_true",
        help="no served deployments: workers on a work pool run those of deployments/prefect.yaml",
    )

    nightly = sub.add_parser("nightly", help="run the nightly refresh once, now")
    nightly.add_argument("--config", required=True, metavar="FILE", help="managed prompts file (YAML or TOML)")
    nightly.add_argument(
        "--margin",
        type=float,
        help="the held-out loss change's 95%% interval must lie below minus this fraction to promote (default 0.01)",
    )
    nightly.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="the accuracy change's 95%% interval may reach down to minus this (default 0.1)",
    )
    nightly.add_argument("--output", metavar="FILE", help="write the decisions as JSON")
    nightly.add_argument(
        "--dry-run", action="store_true", help="print each managed prompt's cost plan and exit: no run is made"
    )

    compare = sub.add_parser("compare", help="score prompt versions on the same held-out data, with a word diff")
    compare.add_argument("name", metavar="NAME", help="the prompt's name in the MLflow Prompt Registry")
    compare.add_argument(
        "versions", nargs="*", metavar="VERSION", help="versions or aliases (default: production latest)"
    )
    compare.add_argument(
        "--data", metavar="SOURCE", help="held-out data source (default: the one recorded with the versions)"
    )
    compare.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN", help="map a column of --data")
    compare.add_argument("--limit", type=int, help="read at most this many examples of --data")
    compare.add_argument("--model", metavar="SPEC", help="model (default: the one recorded with the versions)")
    compare.add_argument("--eval-examples", type=int, metavar="N", help="held-out examples to score")
    compare.add_argument("--no-generate", action="store_true", help="loss only, no generated answers")
    compare.add_argument("--output", metavar="FILE", help="write the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"serve": serve, "nightly": nightly, "compare": compare}
    return handlers[args.command](args)


def serve(args: argparse.Namespace) -> int:
    """`pmpo serve`: start the local stack, print its addresses, and stop it all on Ctrl-C."""
    import os

    from deployments.postgres import DB_ENV, redacted
    from deployments.stack import Stack, StackSettings
    from tasks.environment import home

    prompts = Path(args.prompts).expanduser().resolve()
    if not prompts.is_file():
        from flows.config import ConfigError

        raise ConfigError(f"--prompts {args.prompts}: no such file")
    settings = StackSettings(
        home=home(),
        host=args.host,
        prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port,
        prompts_file=prompts,
        cron=args.cron,
        timezone=args.timezone,
        db=args.db or os.environ.get(DB_ENV) or None,
        serve_deployments=not args.servers_only,
    )
    stack = Stack(settings)
    stack.start(say=lambda line: print(line, flush=True))
    api = f"{settings.prefect_url}/api"
    served = (
        f"deployments: nightly-refresh/nightly-refresh (cron {settings.cron!r}, {settings.timezone}), "
        "optimize-prompt/optimize, compare-prompts/compare\n"
        f"run the refresh now: PREFECT_API_URL={api} prefect deployment run nightly-refresh/nightly-refresh\n"
        if settings.serve_deployments
        else f"deployments: none served; PREFECT_API_URL={api} prefect deploy --all --prefect-file deployments/prefect.yaml\n"
    )
    print(
        f"\nPrefect UI:  {settings.prefect_url}\nMLflow UI:   {settings.mlflow_url}\n{served}"
        f"records: {redacted(settings.db) if settings.db else settings.home} (server logs in {settings.home / 'logs'})\n"
        "Ctrl-C stops everything.",
        flush=True,
    )
    code = stack.wait()
    print("stopped: deployments, MLflow server, Prefect server", flush=True)
    return code


def nightly(args: argparse.Namespace) -> int:
    """`pmpo nightly --config FILE`: the refresh in this process; a table of decisions; exit 1 if any failed."""
    from flows.config import build
    from flows.managed import NightlyConfig, plan
    from flows.nightly import NightlyRefreshFailed, nightly_refresh
    from pmpo_cli import display
    from pmpo_cli.commands import before_flows
    from pmpo_cli.flags import flag_names

    values: dict[str, Any] = {"prompts_file": args.config}
    promotion = {"margin": args.margin, "max_accuracy_drop": args.max_accuracy_drop}
    if any(v is not None for v in promotion.values()):
        values["promotion"] = {k: v for k, v in promotion.items() if v is not None}
    config = build(NightlyConfig, values, origin="arguments", names=flag_names())
    plan(config)  # every entry of the prompts file checked before any run exists (a key typo is a config error)
    if args.dry_run:  # from each entry's initial prompt: no flow run, no MLflow run
        from flows.dry_run import nightly_plan
        from pmpo_cli.plan import show_plan

        for label, cost in nightly_plan(config):
            show_plan(cost, label)
        return 0
    before_flows()
    failed: NightlyRefreshFailed | None = None
    with display.live_progress():
        try:
            report = nightly_refresh(config)
        except NightlyRefreshFailed as exc:  # the others were refreshed: show them, then say which failed
            report, failed = exc.report, exc
    decisions_table(report)
    _write(args.output, report.model_dump(mode="json"))
    if failed is not None:
        raise failed
    return 0


def decisions_table(report: Any) -> None:
    """One row per managed prompt: what happened, the held-out losses it was decided on, and why."""
    from pmpo_cli.display import console

    table = Table(title="nightly refresh", header_style="bold")
    for col in ("prompt", "decision", "why", "production", "candidate", "held-out loss prod -> cand", "reason"):
        table.add_column(col)
    for d in report.decisions:
        style = {"promoted": "green", "kept": "", "failed": "red"}[d.outcome]
        losses = f"{d.production.loss:.4f} -> {d.candidate.loss:.4f}" if d.production and d.candidate else "-"
        table.add_row(
            d.name,
            Text(d.outcome, style=style),
            d.why or "-",
            _v(d.production_version),
            _v(d.candidate_version),
            losses,
            d.reason,
        )
    console.print(table)
    for d in report.decisions:  # the held-out pool is too small for fresh draws, or worn
        if d.heldout and d.heldout.warning:
            console.print(f"[yellow]{d.name}: {d.heldout.warning}[/yellow]")
    for d in report.decisions:  # fanned out over a work pool: where each prompt's optimisation ran
        if d.flow_run_url:
            console.print(f"{d.name}: flow run {d.flow_run_url}")
    console.print(f"MLflow run {report.run_id} in experiment {report.experiment!r} (table decisions.json)")


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def compare(args: argparse.Namespace) -> int:
    """`pmpo compare NAME [VERSION ...]`: the versions' held-out numbers and a word diff of their texts."""
    from flows.compare import CompareConfig, compare_prompts
    from flows.config import build
    from pmpo_cli import display
    from pmpo_cli.commands import before_flows
    from pmpo_cli.flags import flag_names
    from pmpo_cli.options import columns

    values: dict[str, Any] = {"name": args.name, "versions": args.versions}
    if args.data:
        data: dict[str, Any] = {"source": args.data}
        if args.column:
            data["columns"] = columns(args.column)
        if args.limit is not None:
            data["limit"] = args.limit
        values["data"] = data
    if args.model:
        values["model"] = {"spec": args.model}
    if args.eval_examples is not None or args.no_generate:
        ev: dict[str, Any] = {"generate": not args.no_generate}
        if args.eval_examples is not None:
            ev["max_examples"] = args.eval_examples
        values["eval"] = ev
    config = build(CompareConfig, values, origin="arguments", names=flag_names())
    before_flows()
    with display.live_progress():
        result = compare_prompts(config)
    comparison_table(result)
    _write(args.output, result.model_dump(mode="json"))
    return 0


def comparison_table(c: Any) -> None:
    """The versions' numbers, then each prompt as a word diff against the first."""
    from pmpo_cli.display import console

    table = Table(title=f"{c.name}: {c.n_examples} held-out examples of {c.data_source}", header_style="bold")
    for col in ("version", "aliases", "held-out loss", "loss / token", "accuracy"):
        table.add_column(col, justify="right" if col not in ("aliases",) else "left")
    for r in c.rows:
        acc = "-" if r.score.accuracy is None else f"{r.score.accuracy:.1%}"
        table.add_row(
            f"v{r.version}", ", ".join(r.aliases), f"{r.score.loss:.4f}", f"{r.score.loss_per_token:.4f}", acc
        )
    console.print(table)
    first = c.rows[0]
    console.print(Text.assemble(("prompt ", "bold"), (f"v{first.version}", "bold"), ": ", first.prompt))
    for r in c.rows[1:]:
        console.print(
            Text.assemble(("diff ", "bold"), (f"v{first.version} -> v{r.version}", "bold"), ": ", diff_text(r.diff))
        )
    console.print(f"MLflow run {c.run_id} in experiment {c.experiment!r} (table comparison.json, plot comparison.png)")


def diff_text(diff: str) -> Text:
    """A word diff with its [-removed-] and {+added+} marks coloured (the marks stay, for logs and pipes)."""
    import re

    text = Text()
    for part in re.split(r"(\[-.*?-\]|\{\+.*?\+\})", diff):
        style = "red strike" if part.startswith("[-") else "green" if part.startswith("{+") else ""
        text.append(part, style=style)
    return text


def _write(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
