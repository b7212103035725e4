"""The subcommands: turn arguments into a flow config, run the flow, show the outcome."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import tasks  # noqa: F401  (first: it sets telemetry and server defaults before prefect loads)
from pmpo.errors import PmpoError
from pmpo_cli import display


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    return {"optimize": optimize, "evaluate": evaluate, "runs": runs, "show": show}[args.command](args)


def optimize(args: argparse.Namespace) -> int:
    """`pmpo optimize`: the optimisation flow, with progress and a summary table."""
    from flows.config import OptimizeConfig, merge
    from flows.optimize import optimize_prompt
    from pmpo_cli.options import build_config

    config = build_config(OptimizeConfig, merge(optimize_values(args), _task_runner_flags(args)), args)
    if args.dry_run:  # the plan only: no Prefect server, no flow run, no MLflow run
        from flows.dry_run import optimize_plan
        from pmpo_cli.plan import show_plan

        show_plan(optimize_plan(config), config.task or "optimize")
        return 0
    return _run_flow(optimize_prompt, config, display.optimize_summary, args.output)


def optimize_values(args: argparse.Namespace) -> dict[str, Any]:
    """Config values of `pmpo optimize`'s arguments: the shared ones, then the loop's own flags over them."""
    from pmpo_cli.options import config_values

    values = config_values(args)
    for key in ("iterations", "task", "experiment", "masking", "units", "patience"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.racing:
        values["racing"] = {**values.get("racing", {}), "enabled": True}
    for key in ("gate_z", "tempered_gate"):
        if getattr(args, key) is not None:
            values["selection"] = {**values.get("selection", {}), key: getattr(args, key)}
    if args.demos is not None:
        values["demonstrations"] = {**values.get("demonstrations", {}), "k": args.demos}
    budget = {k: v for k, v in (("max_tokens", args.max_tokens), ("max_seconds", args.max_seconds)) if v is not None}
    if budget:
        values["budget"] = {**values.get("budget", {}), **budget}
    return values


def _task_runner_flags(args: argparse.Namespace) -> dict[str, Any]:
    """`--dask ADDRESS` and `--dask-workers N` as the `task_runner` block (either one turns Dask on)."""
    block: dict[str, Any] = {}
    if args.dask is not None:
        block.update(kind="dask", address=args.dask)
    if args.dask_workers is not None:
        block.update(kind="dask", n_workers=args.dask_workers)
    return {"task_runner": block} if block else {}


def evaluate(args: argparse.Namespace) -> int:
    """`pmpo evaluate`: one prompt on the held-out split."""
    from flows.config import EvaluateConfig
    from flows.evaluate import evaluate_prompt
    from pmpo_cli.options import build_config, config_values

    config = build_config(EvaluateConfig, config_values(args), args)
    return _run_flow(evaluate_prompt, config, display.evaluate_summary, args.output)


def runs(args: argparse.Namespace) -> int:
    """`pmpo runs`: recent runs from MLflow."""
    from tasks.mlflow import queries, store

    display.runs_table(queries.list_runs(args.experiment, max_results=args.limit), store.ui_command())
    return 0


def show(args: argparse.Namespace) -> int:
    """`pmpo show RUN`: a run's candidates."""
    from tasks.mlflow import queries

    display.candidates_table(args.run_id, queries.run_candidates(args.run_id), args.width)
    return 0


def _run_flow(flow: Callable[[Any], Any], config, show: Callable[[Any], None], output: str | None) -> int:
    """Check the model, run the flow with live progress, show its summary and write it as JSON if asked."""
    _preflight(config)
    with display.live_progress():
        summary = flow(config)
    show(summary)
    _write_output(output, summary.model_dump(mode="json"))
    return 0


def _preflight(config) -> None:
    """Resolve the model before any flow starts: a wrong spec costs a line, not a server start."""
    from tasks.models import model_ref

    ref = model_ref(config.model)
    rewriter = getattr(config, "rewriter", None)
    if rewriter is not None and rewriter.backend != "same":  # an unreachable endpoint or a missing key, too
        from flows.optimize import rewriter_ref

        rewriter_ref(rewriter, ref)
    before_flows()


def before_flows() -> None:
    """What every command that runs flows in this process needs first: quiet user errors, our own Prefect API."""
    from pmpo_cli import ephemeral
    from tasks.environment import home

    _quiet_user_errors()
    ephemeral.start(home())


class _DropUserErrors(logging.Filter):
    """Drop Prefect's reports of a user mistake (a PmpoError) or of a tracking store that failed (MLflow's error:
    a server down, a bad store): the CLI prints it once, as one line.

    Prefect reports a failure three times (task failed, task state, flow failed), with a traceback; that is
    right for a bug, and stays so for any other exception. An interrupt (SIGTERM, Ctrl-C) is reported the same
    way, as a crash of each running task and of the flow; the CLI says it in one line too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from pmpo_cli import interrupts

        if _INTERRUPTED in record.getMessage() or interrupts.signalled():
            return False  # stopping: whatever fails on the way is the interrupt's doing
        if record.exc_info and interrupts.stopped_by_signal(record.exc_info[1]):
            return False
        if record.exc_info:
            return not isinstance(record.exc_info[1], (PmpoError, *_tracking_errors()))
        match = _STATE_EXCEPTION.search(record.getMessage())
        return not (match and match.group(1) in _user_error_names() | {e.__name__ for e in _tracking_errors()})


def _tracking_errors() -> tuple[type, ...]:
    from tasks.mlflow.store import MlflowException  # loaded by then: a flow that reports has imported tasks.mlflow

    return (MlflowException,)


_INTERRUPTED = "Execution was aborted by a"  # Prefect's crash message for a termination or an interrupt signal
_STATE_EXCEPTION = re.compile(r"encountered an exception:? (\w+)")


def _user_error_names() -> set[str]:
    names, todo = set(), [PmpoError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _quiet_user_errors() -> None:
    """Install the filter on the loggers Prefect reports runs with (once)."""
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrors) for f in logger.filters):
            logger.addFilter(_DropUserErrors())


def _write_output(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
