"""`pmpo`: the command line, a thin front over the flows (optimize, evaluate, nightly, compare), the MLflow record
(runs, show) and the local stack (serve).

Mistakes get one line on stderr and a non-zero exit: 2 for bad arguments or config, 1 for a failed run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Sequence

QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DASK_LOGGING__DISTRIBUTED": "error",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


class UsageError(Exception):
    """Bad command-line arguments (not a PmpoError: reporting it must not wait for pmpo, torch and prefect)."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # No prefix matching: `--iteration 3` would silently be `--iterations 3` and start a real run.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse prints usage and exits; we want one line, the same for every mistake
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="pmpo", description="Optimise a prompt by the model's own loss (PMPO).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser("optimize", help="optimise a prompt (no arguments: the demo task on the bundled model)")
    _data_options(opt)
    _prompt_options(opt)
    opt.add_argument(
        "--description",
        metavar="TEXT",
        help="the task in your words, shown to the rewriter (default: <data>.meta.json's)",
    )
    opt.add_argument("--iterations", type=int, help="PMPO iterations (default 2; the paper runs 20)")
    opt.add_argument("--task", help="task name: MLflow experiment and registered prompt name (default: the dataset's)")
    opt.add_argument("--experiment", help="MLflow experiment (default: the task name)")
    opt.add_argument("--output", metavar="FILE", help="write the run's summary as JSON")
    opt.add_argument(
        "--racing",
        action="store_true",
        default=None,
        help="score candidates on a first slice and finish only the competitive ones (faster)",
    )
    opt.add_argument(
        "--masking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure each unit's dL and propose removals (default on; --no-masking: the paper's ablation)",
    )
    opt.add_argument(
        "--balance-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weigh every label equally in the training loss (default on; --no-balance-labels: the paper's plain mean)",
    )
    opt.add_argument(
        "--units", choices=["auto", "splitter", "model"], help="how the prompt is split for masking (default auto)"
    )
    opt.add_argument(
        "--gate-z",
        type=float,
        metavar="Z",
        help="a candidate must lower the training loss by more than Z paired standard errors "
        "(default 1.0; 0: the paper's strictly lower)",
    )
    opt.add_argument(
        "--tempered-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a gain must also clear the gate with each prompt's preference margins at its best softening, so a "
        "less sure model is no better prompt (default on)",
    )
    opt.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop after N iterations in a row accept no candidate (default 2; 0: never stop early)",
    )
    opt.add_argument(
        "--demos",
        type=int,
        metavar="K",
        help="also try the prompt with K training examples as demonstrations, chosen by loss (default 0: off)",
    )
    _rewriter_options(opt)
    from pmpo_cli.plan import add_budget_options

    add_budget_options(opt)
    opt.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="compute losses on a Dask cluster: local (started here) or tcp://host:port of a scheduler",
    )
    opt.add_argument(
        "--dask-workers", type=_positive, metavar="N", help="worker processes of a local Dask cluster (default 2)"
    )

    ev = sub.add_parser("evaluate", help="score a prompt (or prompts:/name@alias) on a dataset's held-out split")
    _data_options(ev)
    _prompt_options(ev)
    ev.add_argument("--output", metavar="FILE", help="write the result as JSON")

    runs = sub.add_parser("runs", help="list optimisation runs recorded in MLflow")
    runs.add_argument("--experiment", help="only this experiment")
    runs.add_argument("--limit", type=_positive, default=20, help="at most this many runs (default 20)")

    show = sub.add_parser("show", help="a run's candidates")
    show.add_argument("run_id", metavar="RUN", help="run id (see `pmpo runs`)")
    show.add_argument("--width", type=int, default=70, help="characters of each prompt to show")
    from pmpo_cli import ops  # serve, nightly, compare

    ops.add_parsers(sub)
    return parser


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", metavar="SOURCE", help="file (.jsonl .json .csv .tsv .parquet), builtin:<task> or hub name"
    )
    p.add_argument("--format", help="data format, when the file name does not say it")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map a column to our field or a template variable, e.g. target=answer, review=text",
    )
    p.add_argument("--limit", type=int, help="read at most this many examples")
    p.add_argument(
        "--model", metavar="SPEC", help="built-in name, hub id or local directory (default: bundled SmolLM2)"
    )
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--backend", choices=["local", "openai"], help="openai: score through an OpenAI-compatible completions server"
    )
    p.add_argument("--base-url", metavar="URL", help="the scoring server's API root, e.g. http://localhost:8000/v1")
    p.add_argument(
        "--served-model", metavar="NAME", help="the served model's name (default: the one the server serves)"
    )
    p.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the server's API key (never the key)"
    )
    p.add_argument(
        "--tokenizer", metavar="SPEC", help="the served model's tokenizer: hub id or directory (default: --model)"
    )
    p.add_argument("--max-concurrency", type=int, metavar="N", help="requests in flight at once (default 4)")
    p.add_argument(
        "--train-size", type=int, metavar="N", help="training examples (default: 20%% of the data, at most 50)"
    )
    p.add_argument("--seed", type=int, help="seed of the split and the rewrites (default 0)")
    p.add_argument("--eval-examples", type=int, metavar="N", help="held-out examples to score (default 50)")
    p.add_argument("--no-generate", action="store_true", help="held-out loss only, no generated answers")
    p.add_argument(
        "--mc-objective",
        choices=["preference", "ce"],
        help="multiple-choice loss: preference over distractors (default, the paper's) or CE on the answer",
    )
    p.add_argument("--beta", type=float, help="beta of the preference loss (default 1)")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of config fields; flags override it")


def _rewriter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rewriter (default: the scored model rewrites for itself)")
    g.add_argument("--rewriter-spec", metavar="SPEC", help="another in-process model as the rewriter (backend local)")
    g.add_argument("--rewriter-base-url", metavar="URL", help="an OpenAI-compatible chat endpoint (backend openai)")
    g.add_argument("--rewriter-model", metavar="NAME", help="the served model's name at --rewriter-base-url")
    g.add_argument(
        "--rewriter-api-key-env", metavar="VAR", help="environment variable holding its API key (never the key)"
    )


def _prompt_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--prompt",
        help="the prompt, a {{variable}} template, or prompts:/name@alias (default: the dataset's default prompt)",
    )
    group.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="read the prompt from a file (a template, or a chat prompt as a JSON message list)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pmpo` console script."""
    # Our own display shows each step: library chatter (server start, database set-up, weight loading bars)
    # would only scroll it away. setdefault, so a user can turn any of it back on. Set before pmpo is imported.
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    try:
        args = build_parser().parse_args(argv)
        _check_output(getattr(args, "output", None))
    except UsageError as exc:
        return _fail(str(exc), 2)
    from pmpo.errors import PmpoError  # after parsing: `pmpo --help` should not wait for torch
    from pmpo_cli import interrupts

    # SIGTERM (a service manager's or `kill`'s stop) and SIGINT (Ctrl-C) as one interrupt with a bounded exit: the
    # run is marked for resuming and exit code stops the temporary Prefect API server; SIGTERM's default would skip
    # both. Python allows handlers in the main thread only.
    if threading.current_thread() is not threading.main_thread():
        return _command(args, PmpoError)
    # `pmpo serve` stops its own servers, each with a longer grace: no 7-second deadline there.
    deadline = args.command != "serve"
    with interrupts.installed(last_resort=_last_resort, report=_say, deadline=deadline):
        return _command(args, PmpoError)


def _last_resort() -> None:
    """The watchdog's clean-up when the command did not unwind in time: the temporary Prefect API server stopped,
    then its runs marked FAILED (as the flow would have). The stop comes first: it is instant, and the marking may
    wait on the store past the watchdog's bound."""
    from pmpo_cli import ephemeral

    ephemeral.stop_now()
    if "tasks.mlflow.runs" in sys.modules:  # a command that opened no run has none to mark
        sys.modules["tasks.mlflow.runs"].fail_open_runs()


def _command(args: argparse.Namespace, pmpo_error: type[Exception]) -> int:
    from pmpo_cli import interrupts

    try:
        from pmpo_cli import commands, ops

        return ops.run(args) if args.command in ops.COMMANDS else commands.run(args)
    except pmpo_error as exc:
        return _fail(str(exc), 2 if _is_config_error(exc) else 1)
    except BaseException as exc:
        if not interrupts.stopped_by_signal(exc):
            if isinstance(exc, Exception) and _is_tracking_error(exc):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return _fail(f"the MLflow tracking store failed: {first}", 1)
            raise
        interrupts.say_once(_say)
        # The line says why the command stops; what follows is teardown chatter (Prefect's event and log workers
        # draining: "Still processing items...") that would bury it.
        logging.disable(logging.CRITICAL)
        return interrupts.EXIT_CODE


def _check_output(path: str | None) -> None:
    """`--output FILE` into a folder that does not exist fails now, not after the whole run."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    if not os.path.isdir(folder):
        raise UsageError(f"--output {path}: no such directory {folder}; create it first")
    if os.path.isdir(os.path.expanduser(path)):
        raise UsageError(f"--output {path}: is a directory; give a file name")


def _is_config_error(exc: Exception) -> bool:
    """A bad config value or file (exit 2, like bad arguments); flows.config defines it, if it was loaded."""
    config_error = getattr(sys.modules.get("flows.config"), "ConfigError", None)
    return config_error is not None and isinstance(exc, config_error)


def _is_tracking_error(exc: Exception) -> bool:
    """An MLflow error (server down, bad store): one line, not a traceback; mlflow is checked only if loaded."""
    mlflow_error = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
    return mlflow_error is not None and isinstance(exc, mlflow_error)


def _say(line: str) -> None:
    """One line on stderr, importing nothing (the interrupt watchdog calls it from its thread)."""
    print(f"pmpo: error: {line}", file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> int:
    from tasks.environment import redact  # a library's message may quote a URI with credentials

    print(f"pmpo: error: {redact(' '.join(message.split()))}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
