"""Load test past one machine's defaults: concurrent optimisations against one MLflow server and one Prefect
server on PostgreSQL, the nightly refresh fanned out over a work pool with 2 process workers against 1, and the
same concurrent optimisations against SQLite.

1. `--runs` (4) `pmpo optimize` processes at once (tiny random model, 1 iteration, different seeds) against the
   servers of `pmpo serve --db` on a throwaway PostgreSQL: is every run FINISHED in MLflow and COMPLETED in
   Prefect, is every candidate recorded exactly once, and do the server logs hold errors?
2. The nightly refresh of `--prompts` (4) prompts, each a flow run of the `optimize` deployment on one process
   work pool, with 2 workers and then with 1, one run at a time each (fresh prompt names and records each time): which worker ran which
   prompt, and the refresh's wall time.
3. Step 1 again with both servers on SQLite (what `pmpo serve` uses by default), and with no servers at all:
   each process writing one SQLite file itself (what `pmpo optimize` does by default).

    python benchmarks/bench_scale.py                 # all three
    python benchmarks/bench_scale.py --skip-sqlite --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]

from testkit.pgserver import free_port, running_postgres  # noqa: E402

ERROR_LINE = re.compile(r"\bERROR\b|Traceback|database is locked|OperationalError|deadlock", re.IGNORECASE)


def optimize_values(model_dir: Path, seed: int, limit: int) -> dict[str, Any]:
    """One small optimisation: 1 iteration, 2 hard examples x 2 variants, loss-only held-out check."""
    return {
        "data": {"source": "builtin:sentiment", "limit": limit},
        "model": {"spec": str(model_dir), "dtype": "float32"},
        "prompt": "Read the review. Answer with one word.",
        "iterations": 1,
        "seed": seed,
        "rewrite": {"k": 2, "n": 2, "max_new_tokens": 12},
        "eval": {"max_examples": 8, "generate": False},
    }


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """This checkout first, offline, no Prefect or MLflow settings inherited from the caller."""
    (home / "prefect-client").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PMPO_HOME=str(home),
        PREFECT_HOME=str(home / "prefect-client"),
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        **extra,
    )
    return env


@contextmanager
def stack(home: Path, db: str | None) -> Iterator[Any]:
    """Both servers (no served deployments), on PostgreSQL when `db` is given."""
    from deployments.stack import Stack, StackSettings

    s = Stack(
        StackSettings(home=home, prefect_port=free_port(), mlflow_port=free_port(), db=db, serve_deployments=False)
    )
    s.start(say=lambda line: print(f"  {line}", flush=True))
    try:
        yield s
    finally:
        s.stop()


def concurrent_optimize(s: Any | None, model_dir: Path, work: Path, runs: int, limit: int) -> dict[str, Any]:
    """`runs` optimisations at once; what MLflow and Prefect recorded of them, and the servers' error lines.

    With no servers (`s` None), each process writes one SQLite file itself and runs its own serverless Prefect
    API: `pmpo optimize`'s default.
    """
    uri = s.settings.mlflow_url if s else f"sqlite:///{work / 'mlflow.db'}"
    env = base_env(
        work / "home", MLFLOW_TRACKING_URI=uri, **({"PREFECT_API_URL": f"{s.settings.prefect_url}/api"} if s else {})
    )
    procs = []
    start = time.monotonic()
    for i in range(runs):
        config = work / f"run{i}.yaml"
        config.write_text(yaml.safe_dump(optimize_values(model_dir, seed=i, limit=limit)))
        argv = [
            sys.executable,
            "-m",
            "pmpo_cli.main",
            "optimize",
            "--config",
            str(config),
            "--task",
            f"scale-{i}",
            "--output",
            str(work / f"run{i}.json"),
        ]
        procs.append(
            subprocess.Popen(argv, env=env, cwd=work, stdout=open(work / f"run{i}.log", "wb"), stderr=subprocess.STDOUT)
        )
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - start
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from tasks.mlflow import queries

    runs_found = []
    for i, code in enumerate(codes):
        out = work / f"run{i}.json"
        summary = json.loads(out.read_text()) if out.exists() else None
        row: dict[str, Any] = {"run": i, "exit": code}
        if summary:
            ids = [c["id"] for c in queries.run_candidates(summary["run_id"])]
            mine = sorted(c["id"] for c in summary["candidates"])
            [listed] = [r for r in queries.list_runs(f"scale-{i}") if r["run_id"] == summary["run_id"]]
            row.update(
                status=listed["status"],
                n_candidates=len(mine),
                recorded=len(ids),
                exactly_once=sorted(ids) == mine and len(set(ids)) == len(ids),
            )
        else:
            row["error"] = (work / f"run{i}.log").read_text()[-400:].strip().splitlines()[-1:]
        runs_found.append(row)
    if s is None:
        return {"wall_s": round(wall, 1), "runs": runs_found}
    flow_runs = _post(f"{s.settings.prefect_url}/api/flow_runs/filter", {})
    states = sorted(r["state_type"] for r in flow_runs)
    return {
        "wall_s": round(wall, 1),
        "runs": runs_found,
        "prefect_flow_runs": states,
        "server_errors": server_errors(s.settings.home),
    }


def server_errors(home: Path) -> dict[str, list[str]]:
    """Error lines of each server's log (at most 5 each)."""
    found = {}
    for log in sorted((home / "logs").glob("*.log")):
        lines = [line.strip()[:200] for line in log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]
        found[log.stem] = lines[:5] + ([f"... {len(lines) - 5} more"] if len(lines) > 5 else [])
    return found


def nightly_on_pool(
    s: Any, model_dir: Path, work: Path, n_prompts: int, n_workers: int, limit: int, tag: str | None = None
) -> dict[str, Any]:
    """The refresh of `n_prompts` prompts fanned out to `n_workers` process workers; who ran what, and the wall."""
    home = work / "home"
    env = base_env(home, PREFECT_API_URL=f"{s.settings.prefect_url}/api", MLFLOW_TRACKING_URI=s.settings.mlflow_url)
    prompts = work / "prompts.yaml"
    tag = tag or f"w{n_workers}"  # fresh prompt names each round: no production from the last one to start from
    managed = [
        {"name": f"p{i}-{tag}", "optimize": optimize_values(model_dir, seed=i, limit=limit)} for i in range(n_prompts)
    ]
    prompts.write_text(
        yaml.safe_dump({"promotion": {"margin": 0.0}, "experiment": f"nightly-{tag}", "prompts": managed})
    )
    with ExitStack() as workers:
        logs = []
        for w in range(n_workers):
            log = work / f"worker{w}.log"
            argv = [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "pmpo",
                "--name",
                f"worker-{w}",
                "--limit",
                "1",
            ]
            p = subprocess.Popen(
                argv, env=env, cwd=work, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
            )
            workers.callback(_stop, p)
            logs.append(log)
        time.sleep(5)  # the workers register with the pool before the refresh starts its children
        start = time.monotonic()
        argv = [
            sys.executable,
            "-m",
            "pmpo_cli.main",
            "nightly",
            "--config",
            str(prompts),
            "--output",
            str(work / "nightly.json"),
        ]
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
    report = json.loads((work / "nightly.json").read_text()) if (work / "nightly.json").exists() else {"decisions": []}
    ran_by = {}
    for d in report["decisions"]:
        ran_by[d["name"]] = [
            f"worker-{w}" for w, log in enumerate(logs) if d.get("flow_run_id") and d["flow_run_id"] in log.read_text()
        ]
    busy, window = child_seconds(s, [d["flow_run_id"] for d in report["decisions"] if d.get("flow_run_id")])
    return {
        "workers": n_workers,
        "wall_s": round(wall, 1),
        "child_runs_s": busy,
        "children_window_s": window,  # first child's start to last child's end
        # Child run time over that window: how many optimisations ran side by side on average.
        "overlap": round(sum(busy) / window, 2) if window else None,
        "exit": done.returncode,
        "outcomes": {d["name"]: d["outcome"] for d in report["decisions"]},
        "ran_by": ran_by,
        "server_errors": server_errors(s.settings.home),
        "error": done.stderr[-600:] if done.returncode else "",
    }


def child_seconds(s: Any, flow_run_ids: list[str]) -> tuple[list[float], float]:
    """Each child flow run's time from start to end as Prefect recorded it, and first start to last end."""
    from datetime import datetime

    runs = _post(f"{s.settings.prefect_url}/api/flow_runs/filter", {"flow_runs": {"id": {"any_": flow_run_ids}}})
    when = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    spans = [(when(r["start_time"]), when(r["end_time"])) for r in runs if r["start_time"] and r["end_time"]]
    if not spans:
        return [], 0.0
    window = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
    return sorted(round((e - b).total_seconds(), 1) for b, e in spans), round(window, 1)


def deploy(s: Any, env: dict[str, str]) -> None:
    """The work pool and the deployments of prefect.yaml on this Prefect server."""
    for args in (
        ["work-pool", "create", "pmpo", "--type", "process"],
        ["--no-prompt", "deploy", "--all", "--prefect-file", str(ROOT / "deployments" / "prefect.yaml")],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )
        if out.returncode:
            raise RuntimeError(f"prefect {' '.join(args)}: {out.stdout[-1500:]} {out.stderr[-1500:]}")


def _stop(p: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)


def _post(url: str, body: dict) -> list:
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        return json.loads(response.read())


def load() -> str:
    """The machine's load while we measured (others share its cores)."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> None:
    """Run the three parts and print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="concurrent `pmpo optimize` runs (default 4)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts of the nightly refresh (default 4)")
    parser.add_argument("--limit", type=int, default=60, help="examples per dataset (default 60)")
    parser.add_argument("--skip-sqlite", action="store_true", help="leave out part 3")
    parser.add_argument("--skip-nightly", action="store_true", help="leave out part 2")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    os.environ.update(base_env(Path(tempfile.mkdtemp(prefix="pmpo-scale-"))))
    from testkit.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="pmpo-scale-"))
    model_dir = build_tiny_model(work / "tiny-model")
    figures: dict[str, Any] = {}
    with running_postgres() as url:
        print(f"1. {args.runs} concurrent `pmpo optimize` runs, MLflow + Prefect on PostgreSQL", flush=True)
        with stack(work / "pg", url) as s:
            (work / "pg" / "opt").mkdir(parents=True)
            figures["postgres"] = {
                **concurrent_optimize(s, model_dir, work / "pg" / "opt", args.runs, args.limit),
                "load": load(),
            }
            print(json.dumps(figures["postgres"], indent=1), flush=True)
            if not args.skip_nightly:
                deploy(s, base_env(work / "pg", PREFECT_API_URL=f"{s.settings.prefect_url}/api"))
                for n in (2, 1):
                    print(f"2. nightly refresh of {args.prompts} prompts on a work pool, {n} worker(s)", flush=True)
                    (work / f"night{n}").mkdir()
                    figures[f"nightly_{n}"] = {
                        **nightly_on_pool(s, model_dir, work / f"night{n}", args.prompts, n, args.limit),
                        "load": load(),
                    }
                    print(json.dumps(figures[f"nightly_{n}"], indent=1), flush=True)
                one, two = figures["nightly_1"], figures["nightly_2"]
                figures["nightly_speedup"] = round(one["wall_s"] / two["wall_s"], 2)
                figures["children_window_speedup"] = round(
                    one["children_window_s"] / max(two["children_window_s"], 1e-9), 2
                )
                print(
                    f"nightly wall, 1 worker / 2 workers: {figures['nightly_speedup']}x "
                    f"(children's window alone: {figures['children_window_speedup']}x)",
                    flush=True,
                )
    if not args.skip_sqlite:
        print(f"3. {args.runs} concurrent `pmpo optimize` runs, MLflow + Prefect on SQLite", flush=True)
        with stack(work / "lite", None) as s:
            (work / "lite" / "opt").mkdir(parents=True)
            figures["sqlite"] = {
                **concurrent_optimize(s, model_dir, work / "lite" / "opt", args.runs, args.limit),
                "load": load(),
            }
            print(json.dumps(figures["sqlite"], indent=1), flush=True)
        print(
            f"3b. {args.runs} concurrent `pmpo optimize` runs, no servers: each writes one SQLite file itself",
            flush=True,
        )
        (work / "file").mkdir()
        figures["sqlite_file"] = {
            **concurrent_optimize(None, model_dir, work / "file", args.runs, args.limit),
            "load": load(),
        }
        print(json.dumps(figures["sqlite_file"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
