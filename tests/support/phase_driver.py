"""Run `pmpo optimize` (the CLI, in this process) and print each step's start and end as a line on stdout, so a
test can kill the process at a chosen phase: `python tests/phase_driver.py ARGS...`."""

from __future__ import annotations

import sys

from pmpo_cli.main import main
from tasks.progress import Event, listening


def _announce(e: Event) -> None:
    if e.kind in ("start", "done"):
        print(f"PHASE {e.kind} {e.label}", flush=True)


if __name__ == "__main__":
    with listening(_announce):
        code = main(sys.argv[1:])
    print("PHASE exit", flush=True)
    sys.exit(code)
