"""The single-process alternative to prefect.yaml: serve the same three deployments from this process
(`flow.serve` for several flows). Flow runs start as subprocesses of it; no work pool or worker is needed, but a
Prefect server is (PREFECT_API_URL). `pmpo serve` runs this next to a local Prefect and MLflow server.

    python -m deployments.serve --prompts deployments/prompts.example.yaml --cron "0 2 * * *" --timezone Europe/Berlin
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import flows  # noqa: F401  (first: it sets telemetry and server defaults before prefect is imported)

DEFAULT_CRON = "0 2 * * *"  # 02:00, when nobody waits for the machine
DEFAULT_TIMEZONE = "UTC"  # Prefect's own default; say --timezone for local nights
EXAMPLE_PROMPTS = Path(__file__).resolve().parent / "prompts.example.yaml"
DEPLOYMENTS = ("nightly-refresh/nightly-refresh", "optimize-prompt/optimize", "compare-prompts/compare")


def build(
    prompts_file: str | Path = EXAMPLE_PROMPTS, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE
) -> list:
    """The nightly refresh on a cron schedule, and optimize and compare on demand (forms in the Prefect UI)."""
    from prefect.schedules import Cron

    from flows.compare import compare_prompts
    from flows.nightly import nightly_refresh
    from flows.optimize import optimize_prompt

    return [
        nightly_refresh.to_deployment(
            "nightly-refresh",
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"config": {"prompts_file": str(prompts_file)}},
            description="Optimise each managed prompt from production; promote only on better held-out loss.",
            tags=["pmpo"],
        ),
        optimize_prompt.to_deployment(
            "optimize", description="One optimisation run (the parameters are a form).", tags=["pmpo"]
        ),
        compare_prompts.to_deployment(
            "compare", description="Score prompt versions on the same held-out data.", tags=["pmpo"]
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    from prefect import serve

    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts", default=str(EXAMPLE_PROMPTS), help="the managed prompts file of the nightly refresh"
    )
    parser.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"schedule of the nightly refresh (default {DEFAULT_CRON!r})"
    )
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="time zone of the schedule, e.g. Europe/Berlin")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: one model in memory)")
    args = parser.parse_args(argv)
    serve(*build(Path(args.prompts).resolve(), args.cron, args.timezone), limit=args.limit)


if __name__ == "__main__":
    main()
