"""Quality benchmark: do PMPO's prompts win on held-out data, against the initial prompt and an APE baseline?

    python benchmarks/bench_quality.py                 # 6 BIG-bench tasks + 2 built-ins, 2 iterations (hours on a CPU)
    python benchmarks/bench_quality.py --quick         # smoke run: 2 tasks, 1 iteration, 40 held-out examples
    python benchmarks/bench_quality.py --tasks navigate,builtin:sentiment --arms initial,pmpo --json out.json

Arms, on the same seeded split and the same held-out examples (the first --heldout of the test split):
  initial          the task's own instruction (BIG-bench task_prefix, or its description)
  pmpo             pmpo.optimize with the defaults
  pmpo_no_masking  the paper's ablation without segment masking (OptimizerConfig(masking=False))
  pmpo_ce          plain CE instead of the preference loss for multiple choice (ScorerSettings(mc_objective="ce"))
  ape              APE's forward template, as many candidates as the pmpo arm scored, best training accuracy
Every arm's final prompt is evaluated with the same scorer (ScorerSettings() defaults), so held-out losses
compare; accuracy deltas carry 95% paired bootstrap intervals against the initial prompt. Cost is the
model's usage counters (forward passes; tokens scored, read as generation context, and generated) and wall time of the arm's search only.
One MLflow run per invocation goes to experiment `pmpo-quality` (MLFLOW_TRACKING_URI, else pmpo's store).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from ape import NoInstruction, ape  # noqa: E402
from quality_report import (  # noqa: E402
    ARMS,
    INITIAL,
    PMPO,
    ArmResult,
    BenchSettings,
    Cost,
    Measure,
    build_report,
    markdown,
    table,
    to_json,
)

import pmpo  # noqa: E402
from pmpo.data import Dataset  # noqa: E402
from pmpo.evaluation.draw import heldout_draw  # noqa: E402
from pmpo.evaluation.heldout import Evaluation, evaluate  # noqa: E402
from pmpo.loop.optimizer import OptimizerConfig  # noqa: E402
from pmpo.models.loading import LoadedModel, ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer, ScorerSettings  # noqa: E402

# The module, not the `evaluate` function the package re-exports under the same name.
evaluation = importlib.import_module("pmpo.evaluation.heldout")
BUILTINS = ("builtin:sentiment", "builtin:arithmetic")
# Quick: one short multiple-choice BIG-bench task and one built-in, so both kinds of accuracy show up.
QUICK_TASKS = ("sports_understanding", "builtin:sentiment")
PMPO_ARMS = (PMPO, "pmpo_no_masking", "pmpo_ce")


def main(argv: list[str] | None = None) -> None:
    """Run every arm on every task, print the table and targets, write JSON, log to MLflow."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = _tasks(args)
    arms = _arms(args.arms)
    if "ape" in arms and not args.ape_candidates and not set(arms) & set(PMPO_ARMS):
        raise SystemExit("--arms: ape takes its budget from a pmpo arm; add one or give --ape-candidates N")
    lm = load_model(ModelSettings())
    settings = BenchSettings(
        tasks=tuple(tasks),
        arms=arms,
        iterations=args.iterations,
        heldout=args.heldout,
        seed=args.seed,
        model=lm.identity,
        quick=args.quick,
    )
    results: list[ArmResult] = []
    for task in tasks:
        results += run_task(lm, task, settings, Path(args.data_dir), ape_candidates=args.ape_candidates)
        if args.json:  # after every task, so a run cut short keeps the tasks it finished
            partial = build_report(settings, _machine(lm), results)
            Path(args.json).write_text(json.dumps(to_json(partial), indent=2))
    report = build_report(settings, _machine(lm), results)
    print(table(report))
    print("\nREADME table (means over tasks):\n" + markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(report), indent=2))
    if not args.no_mlflow:
        from quality_mlflow import log_run

        run_id = log_run(report, _tracking_uri())
        _log(f"MLflow run {run_id} in experiment pmpo-quality")


def run_task(
    lm: LoadedModel, task: str, settings: BenchSettings, data_dir: Path, *, ape_candidates: int = 0
) -> list[ArmResult]:
    """All arms on one task: same split, same held-out examples, one fixed held-out scorer."""
    dataset = load_task(task, data_dir)
    split = pmpo.split_dataset(dataset, seed=settings.seed)
    drawn = heldout_draw(split.test, settings.heldout, seed=settings.seed)  # as the flows draw: seeded, by label
    heldout = drawn.subset(list(range(len(drawn))), name=f"{dataset.name}/heldout")
    initial = wl.incumbent_of(dataset)
    scorer = Scorer(lm, ScorerSettings())
    _log(f"[{task}] {len(split.train)} train, {len(heldout)} held-out; evaluating the initial prompt")
    base = evaluate(lm, initial, heldout, scorer=scorer)
    shared = not task.startswith("builtin:")
    results: list[ArmResult] = []
    scored: dict[str, int] = {}  # candidates each PMPO arm scored, for APE's budget
    for arm in settings.arms:
        if arm == INITIAL:
            results.append(arm_result(task, shared, arm, initial, 1, base, None, Cost(0, 0, 0, 0.0)))
            continue
        start, clock = lm.usage.snapshot(), time.perf_counter()
        budget = ape_candidates or scored.get(PMPO) or next(iter(scored.values()), 0)
        found = search(lm, arm, initial, split.train, settings, ape_budget=budget)
        if found is None:
            _log(f"[{task}] {arm}: no candidate instruction parsed from any proposal; no {arm} row for this task")
            continue
        prompt, candidates = found
        if arm in PMPO_ARMS:
            scored[arm] = candidates
        used, wall = lm.usage.snapshot() - start, time.perf_counter() - clock
        cost = Cost(used.forward_passes, used.tokens_scored, used.tokens_generated, wall, used.tokens_prefilled)
        final = base if prompt == initial else evaluate(lm, prompt, heldout, scorer=scorer)
        delta = evaluation.compare(base, final)
        results.append(arm_result(task, shared, arm, prompt, candidates, final, delta, cost))
        _log(
            f"[{task}] {arm}: {candidates} candidates, {wall:.0f} s, {cost.forward_tokens:,} tokens; "
            f"held-out loss {base.loss:.3f} -> {final.loss:.3f}, acc_norm {_pct(base.option_accuracy_norm)} -> "
            f"{_pct(final.option_accuracy_norm)}, gen acc {_pct(base.accuracy)} -> {_pct(final.accuracy)}; "
            f"prompt {prompt[:200]!r}"
        )
    return results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def search(
    lm: LoadedModel, arm: str, initial: str, train: Dataset, settings: BenchSettings, *, ape_budget: int
) -> tuple[str, int] | None:
    """Run one arm's prompt search: (final prompt, candidates scored or proposed); None if APE found none."""
    if arm in PMPO_ARMS:
        config, scoring = pmpo_arm(arm, settings)
        outcome = pmpo.optimize(initial, train, lm, config=config, scorer_settings=scoring)
        return outcome.best_prompt, len(outcome.candidates)
    try:
        found = ape(lm, train, ape_budget, seed=settings.seed)
    except NoInstruction:  # a small model may write no parsable instruction at all: report it, keep the run going
        return None
    return found.best, len(found.candidates)


def arm_result(task, shared, arm, prompt, candidates, ev: Evaluation, cmp, cost: Cost) -> ArmResult:
    """One row of the report from an arm's held-out evaluation and its comparison with the initial prompt."""

    def delta(name):
        return getattr(cmp, name) if cmp is not None else None

    return ArmResult(
        task=task,
        shared=shared,
        arm=arm,
        prompt=prompt,
        candidates=candidates,
        loss=Measure(ev.loss, delta("loss")),
        acc=Measure(ev.option_accuracy, delta("option_accuracy")),
        acc_norm=Measure(ev.option_accuracy_norm, delta("option_accuracy_norm")),
        gen_acc=Measure(ev.accuracy, delta("accuracy")),
        cost=cost,
    )


def load_task(task: str, data_dir: Path) -> Dataset:
    """A built-in by name, or `<task>.jsonl` from the shared BIG-bench samples."""
    if task.startswith("builtin:"):
        return pmpo.load_dataset(task)
    path = data_dir / f"{task}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--tasks: {task!r} is neither a built-in nor a file {path} (see --data-dir)")
    return pmpo.load_dataset(path)


def _tasks(args) -> list[str]:
    if args.tasks:
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.quick:
        return list(QUICK_TASKS)
    shared = sorted(p.stem for p in Path(args.data_dir).glob("*.jsonl"))
    if not shared:
        _log(f"no BIG-bench samples in {args.data_dir}: built-in tasks only")
    return shared + list(BUILTINS)


def _arms(spec: str) -> tuple[str, ...]:
    wanted = [a.strip() for a in spec.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    return tuple(a for a in ARMS if a in wanted)  # APE last: it takes its budget from the pmpo arm


def pmpo_arm(arm: str, settings: BenchSettings) -> tuple[OptimizerConfig, ScorerSettings]:
    """The optimizer and scorer settings of a PMPO arm (the others differ from the defaults in one field)."""
    config = OptimizerConfig(iterations=settings.iterations, seed=settings.seed)
    if arm == "pmpo_no_masking":
        return config.model_copy(update={"masking": False}), ScorerSettings()
    if arm == "pmpo_ce":
        return config, ScorerSettings(mc_objective="ce")
    return config, ScorerSettings()


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="also write the whole report as JSON to PATH")
    p.add_argument("--tasks", help="comma-separated: BIG-bench sample names in --data-dir and/or builtin:NAME")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    # 2: enough for PMPO to move off the initial prompt; ~2 min per task and arm with SmolLM2 on 2 cores.
    p.add_argument("--iterations", type=int, default=None, help="PMPO iterations (default 2, --quick 1)")
    p.add_argument("--heldout", type=int, default=None, help="held-out examples per task (default 100, --quick 40)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 tasks, 1 iteration, 40 held-out examples")
    p.add_argument("--data-dir", default=str(wl.BBH_DIR.resolve()), help="folder of the BIG-bench *.jsonl samples")
    p.add_argument("--seed", type=int, default=0, help="split, PMPO and APE seed")
    p.add_argument("--ape-candidates", type=int, default=0, help="APE's budget (0: as many as the pmpo arm scored)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = p.parse_args(argv)
    args.iterations = args.iterations or (1 if args.quick else 2)
    # 100 held-out examples: a 95% interval on an accuracy difference of about +-6-10 points.
    args.heldout = args.heldout or (40 if args.quick else 100)
    return args


def _machine(lm: LoadedModel) -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "load_average_start": os.getloadavg()[0],
    }


def _tracking_uri() -> str:
    from tasks.environment import tracking_uri

    return tracking_uri()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
