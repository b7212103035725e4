"""Orchestration overhead: the same optimisation through the Prefect flow (cached tasks, MLflow record) and
through `pmpo.optimize` directly, in one process, as a ratio.

Both paths do the same work: the PMPO loop from the same prompt on the same training set with the same seed,
then the held-out evaluation of the initial and the best prompt (the flow always ends with it). The model is
loaded once beforehand and shared, so loading is in neither figure; each path starts with an empty scorer
memo, and the flow with an empty task cache. The Prefect API start (serverless mode, once per process) and
the MLflow database set-up (once per data directory) are timed on their own. A third figure is the flow
rerun on a warm cache: orchestration and tracking with no compute left, the floor of the overhead. On a
shared machine, alternate the paths with --repeats.

    python benchmarks/flow_overhead.py                       # the demo defaults, bundled SmolLM2
    python benchmarks/flow_overhead.py --iterations 1 --rewrite-k 1 --eval-examples 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Time both paths and print the figures (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="PMPO iterations (default: the flow's default)")
    parser.add_argument("--model", help="model spec (default: the bundled SmolLM2)")
    parser.add_argument("--limit", type=int, help="examples in the demo dataset (default: all)")
    parser.add_argument("--rewrite-k", type=int, help="hard examples (rewrite requests) per iteration")
    parser.add_argument("--eval-examples", type=int, help="held-out examples scored at the end")
    parser.add_argument("--repeats", type=int, default=1, help="alternate direct/flow this many times (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="pmpo-bench-"))
    os.environ["PMPO_HOME"] = str(home)  # a fresh MLflow store
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PMPO_RESULTS_DIR", None)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from prefect import flow

    import pmpo
    from flows.config import OptimizeConfig
    from flows.optimize import optimize_prompt
    from pmpo.data import load_dataset, split_dataset
    from pmpo.evaluation.heldout import evaluate
    from tasks import models
    from tasks.mlflow import store

    values: dict = {}
    if args.iterations is not None:
        values["iterations"] = args.iterations
    if args.model:
        values["model"] = {"spec": args.model}
    if args.limit:
        values["data"] = {"limit": args.limit}
    if args.rewrite_k:
        values["rewrite"] = {"k": args.rewrite_k}
    if args.eval_examples:
        values["eval"] = {"max_examples": args.eval_examples}
    config = OptimizeConfig.model_validate(values)
    ref = models.model_ref(config.model, config.scoring)
    lm = models.loaded(ref)  # loaded once, shared by both paths

    dataset = load_dataset(config.data.source, limit=config.data.limit)
    split = split_dataset(dataset, seed=config.seed, train_fraction=config.train_fraction, train_cap=config.train_cap)
    prompt = config.prompt or dataset.default_prompt
    heldout = config.eval.examples(split.test, config.seed)

    def direct() -> object:
        result = pmpo.optimize(prompt, split.train, lm, config=config, scorer_settings=config.scoring)
        for p in (result.initial.prompt, result.best.prompt):
            evaluate(lm, p, heldout, generate=config.eval.generate, max_new_tokens=config.eval.max_new_tokens)
        return result

    @flow(name="warm-up")
    def warm_up() -> None:
        """Starts Prefect's serverless API, which the first flow of a process pays for."""

    figures: dict[str, float] = {}
    start = time.perf_counter()
    warm_up()
    figures["prefect_api_start_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store.client().search_experiments()  # creates the MLflow database: once per data directory
    figures["mlflow_store_create_s"] = time.perf_counter() - start

    direct_s, flow_s = [], []
    for repeat in range(args.repeats):  # alternated, so drift in the machine's load hits both alike
        start = time.perf_counter()
        result = direct()
        direct_s.append(time.perf_counter() - start)

        os.environ["PMPO_RESULTS_DIR"] = str(home / f"results-{repeat}")  # an empty task cache
        models._SCORERS.clear()  # an empty scorer memo, as the direct path had
        start = time.perf_counter()
        summary = optimize_prompt(config)
        flow_s.append(time.perf_counter() - start)

    start = time.perf_counter()
    optimize_prompt(config)  # everything cached: what is left is orchestration and tracking
    figures["flow_cached_rerun_s"] = time.perf_counter() - start
    figures["direct_s"], figures["flow_s"] = statistics.median(direct_s), statistics.median(flow_s)
    figures["direct_runs_s"], figures["flow_runs_s"] = direct_s, flow_s

    same = [c.id for c in result.candidates] == [c.id for c in summary.candidates]
    figures["ratio_flow_to_direct"] = figures["flow_s"] / figures["direct_s"]
    figures["overhead_s"] = figures["flow_s"] - figures["direct_s"]
    report = {**figures, "same_candidates": same, "n_candidates": summary.n_candidates, "iterations": config.iterations}
    report["load_average"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
