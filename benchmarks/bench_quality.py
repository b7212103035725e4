"""Quality benchmark: do PMPO's prompts win on held-out data, against the initial prompt and the peers a user would pick?

    python benchmarks/bench_quality.py --json q.json       # 6 BIG-bench tasks + 2 built-ins, every arm (hours on a CPU)
    python benchmarks/bench_quality.py --quick             # smoke run: 2 tasks, 1 iteration, 40 held-out examples
    python benchmarks/bench_quality.py --tasks navigate,builtin:sentiment --arms initial,pmpo --json out.json

Arms, on the same seeded split and the same held-out examples (a seeded draw, stratified by label, of --heldout):
  initial          the task's own instruction (BIG-bench task_prefix, or its description)
  pmpo             pmpo.optimize with the defaults
  pmpo_strict      the paper's selection: any strictly lower training loss wins (gate_z 0, no accuracy guard, no
                   tempered gate)
  pmpo_demos       the defaults plus demonstrations chosen by loss as a candidate source
  pmpo_no_masking  the paper's ablation without segment masking (OptimizerConfig(masking=False))
  pmpo_ce          plain CE instead of the preference loss for multiple choice (ScorerSettings(mc_objective="ce"))
  pmpo_racing      the defaults with racing on (clearly worse candidates stop after a slice of the training set)
  pmpo_more_train  the defaults on twice the training examples: the split's, and as many of the test split's that the
                   held-out draw left out (the held-out examples are the other arms')
  pmpo_z2          the defaults with gate_z 2: a gate for a dozen candidates compared at once, not one
  pmpo_n8          the defaults with 8 variants per rewrite request (the paper: 4): more draws from the rewriter
  train_acc        "why loss?": the prompts the pmpo arm scored, the pick by training accuracy instead of loss
                   (multiple choice: acc from the loss's own passes; otherwise greedy answers on the training set)
  ape              APE's forward template, as many candidates as the pmpo arm scored, best training accuracy
  gepa             GEPA (the optimizer MLflow ships), the bundled model as task and reflection model, at the pmpo
                   arm's forward-token budget (needs the `bench` extra)
Every arm's final prompt is evaluated with the same scorer (ScorerSettings() defaults), so held-out losses
compare; deltas carry 95% paired bootstrap intervals against the initial prompt, and the means over the shared tasks a
pooled interval (resampling within each task). Cost is the model's usage counters (forward passes; tokens scored, read
as generation context, and generated) and wall time of the arm's search only.
Runs arm by arm over the tasks (the pmpo arm on every task first) and writes --json after every (task, arm); a rerun
with the same --json and settings resumes, skipping the rows it has.
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
from dataclasses import dataclass, fields, replace
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
    ExampleDiffs,
    Measure,
    PoolEntry,
    build_report,
    markdown,
    results_from_json,
    table,
    to_json,
)

import pmpo  # noqa: E402
from pmpo.data import Dataset  # noqa: E402
from pmpo.data.examples import example_key  # noqa: E402
from pmpo.evaluation.draw import heldout_draw  # noqa: E402
from pmpo.evaluation.heldout import Evaluation, evaluate  # noqa: E402
from pmpo.loop.optimizer import OptimizerConfig  # noqa: E402
from pmpo.loop.result import OptimizeResult  # noqa: E402
from pmpo.loop.settings import SelectionSettings  # noqa: E402
from pmpo.models.loading import LoadedModel, ModelSettings, load_model  # noqa: E402
from pmpo.rewriting.settings import RewriteSettings  # noqa: E402
from pmpo.scoring.loss import Scorer, ScorerSettings  # noqa: E402
from pmpo.scoring.settings import RacingSettings  # noqa: E402

# The module, not the `evaluate` function the package re-exports under the same name.
evaluation = importlib.import_module("pmpo.evaluation.heldout")
BUILTINS = ("builtin:sentiment", "builtin:arithmetic")
# Quick: one short multiple-choice BIG-bench task and one built-in, so both kinds of accuracy show up.
QUICK_TASKS = ("sports_understanding", "builtin:sentiment")
PMPO_ARMS = tuple(a for a in ARMS if a.startswith(PMPO))  # pmpo.optimize: the defaults, or one thing changed
# The arms; pmpo_no_masking and pmpo_ce are the paper's ablations, pmpo_racing, pmpo_more_train, pmpo_z2
# and pmpo_n8 questions of cost and of noise, run when asked.
DEFAULT_ARMS = (INITIAL, PMPO, "pmpo_strict", "pmpo_demos", "train_acc", "ape", "gepa")
# Demonstrations per demo candidate in the pmpo_demos arm: a 3-shot prompt, as lm-eval's BBH few-shot uses.
DEMOS_K = 3


def main(argv: list[str] | None = None) -> None:
    """Run every arm on every task, print the table and targets, write JSON, log to MLflow."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = _tasks(args)
    arms = _arms(args.arms)
    needs_pmpo = {"ape", "train_acc", "gepa"} & set(arms)
    if needs_pmpo and PMPO not in arms and not args.ape_candidates:
        raise SystemExit(f"--arms: {', '.join(sorted(needs_pmpo))} take their budget from the pmpo arm; add it")
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
    results = _resumed(args.json, settings)
    contexts: dict[str, TaskContext] = {}
    for arm in arms:  # arm by arm: the defaults on every task first, the arms that build on them after
        for task in tasks:
            if any(r.task == task and r.arm == arm for r in results):
                continue
            if task not in contexts:
                contexts[task] = task_context(lm, task, settings, Path(args.data_dir))
            row = run_arm(lm, contexts[task], arm, settings, results, ape_candidates=args.ape_candidates)
            if row is not None:
                results.append(row)
            if args.json:  # after every row, so a run cut short keeps what it finished
                partial = build_report(settings, _machine(lm), results)
                Path(args.json).write_text(json.dumps(to_json(partial), indent=2))
    report = build_report(settings, _machine(lm), results)
    print(table(report))
    print("\nDocs table (means over tasks):\n" + markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(report), indent=2))
    if not args.no_mlflow:
        from quality_mlflow import log_run

        run_id = log_run(report, _tracking_uri())
        _log(f"MLflow run {run_id} in experiment pmpo-quality")


def _resumed(path: str | None, settings: BenchSettings) -> list[ArmResult]:
    """The rows an earlier run with the same settings wrote to `path`; none if there is no such file."""
    if not path or not Path(path).is_file():
        return []
    data = json.loads(Path(path).read_text())
    before = data["settings"]
    keys = ("iterations", "heldout", "seed", "model", "quick")
    differ = [k for k in keys if before.get(k) != getattr(settings, k)]
    if differ:
        raise SystemExit(f"--json {path}: written with other settings ({', '.join(differ)}); give another path")
    rows = results_from_json(data)
    _log(f"resuming {path}: {len(rows)} row(s) kept")
    return rows


@dataclass(frozen=True)
class TaskContext:
    """One task's split, held-out examples and the initial prompt's evaluation: shared by every arm."""

    task: str
    shared: bool
    train: Dataset
    heldout: Dataset
    # the test split's examples outside the held-out draw (None: the draw took them all): pmpo_more_train's extra data
    spare: Dataset | None
    initial: str
    base: Evaluation
    scorer: Scorer


def task_context(lm: LoadedModel, task: str, settings: BenchSettings, data_dir: Path) -> TaskContext:
    """Split the task, draw its held-out examples as the flows do, and evaluate the initial prompt once."""
    dataset = load_task(task, data_dir)
    split = pmpo.split_dataset(dataset, seed=settings.seed)
    drawn = heldout_draw(split.test, settings.heldout, seed=settings.seed)  # as the flows draw: seeded, by label
    heldout = drawn.subset(list(range(len(drawn))), name=f"{dataset.name}/heldout")
    drawn_keys = {example_key(e) for e in drawn.examples}
    left = [i for i, e in enumerate(split.test.examples) if example_key(e) not in drawn_keys]
    spare = split.test.subset(left) if left else None
    initial = wl.incumbent_of(dataset)
    scorer = Scorer(lm, ScorerSettings())
    _log(f"[{task}] {len(split.train)} train, {len(heldout)} held-out; evaluating the initial prompt")
    base = evaluate(lm, initial, heldout, scorer=scorer)
    return TaskContext(task, not task.startswith("builtin:"), split.train, heldout, spare, initial, base, scorer)


def run_arm(
    lm: LoadedModel,
    ctx: TaskContext,
    arm: str,
    settings: BenchSettings,
    done: list[ArmResult],
    *,
    ape_candidates: int = 0,
) -> ArmResult | None:
    """One arm on one task: search, evaluate its prompt on the held-out examples; None if it found no prompt."""
    if arm == INITIAL:
        return arm_result(ctx, arm, ctx.initial, 1, ctx.base, Cost(0, 0, 0, 0.0))
    reference = next((r for r in done if r.task == ctx.task and r.arm == PMPO), None)
    start, clock = lm.usage.snapshot(), time.perf_counter()
    found = search(lm, arm, ctx, settings, reference, ape_candidates=ape_candidates)
    if found is None:
        return None
    prompt, candidates, pool = found
    used, wall = lm.usage.snapshot() - start, time.perf_counter() - clock
    cost = Cost(used.forward_passes, used.tokens_scored, used.tokens_generated, wall, used.tokens_prefilled)
    if arm == "train_acc":  # its pool is the pmpo arm's search: that work is this arm's too
        cost = _plus(cost, reference.cost)
    final = ctx.base if prompt == ctx.initial else evaluate(lm, prompt, ctx.heldout, scorer=ctx.scorer)
    row = arm_result(ctx, arm, prompt, candidates, final, cost, pool)
    base = ctx.base
    _log(
        f"[{ctx.task}] {arm}: {candidates} candidates, {wall:.0f} s, {cost.forward_tokens:,} tokens; "
        f"held-out loss {base.loss:.3f} -> {final.loss:.3f}, acc_norm {_pct(base.option_accuracy_norm)} -> "
        f"{_pct(final.option_accuracy_norm)}, gen acc {_pct(base.accuracy)} -> {_pct(final.accuracy)}; "
        f"prompt {prompt[:200]!r}"
    )
    return row


def _plus(a: Cost, b: Cost) -> Cost:
    return Cost(*(getattr(a, f.name) + getattr(b, f.name) for f in fields(Cost)))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def search(
    lm: LoadedModel,
    arm: str,
    ctx: TaskContext,
    settings: BenchSettings,
    reference: ArmResult | None,
    *,
    ape_candidates: int = 0,
) -> tuple[str, int, tuple[PoolEntry, ...]] | None:
    """One arm's prompt search: (final prompt, candidates scored or proposed, pool); None where it found none.

    `reference` is the pmpo arm's row on this task: APE takes its candidate count, GEPA its forward tokens, and
    train_acc its pool of scored prompts.
    """
    if arm in PMPO_ARMS:
        config, scoring = pmpo_arm(arm, settings)
        if config is None:
            _log(f"[{ctx.task}] {arm}: this pmpo has no demonstrations setting; no {arm} row")
            return None
        outcome = pmpo.optimize(ctx.initial, training_set(arm, ctx), lm, config=config, scorer_settings=scoring)
        return outcome.best_prompt, len(outcome.candidates), pool_of(outcome)
    if reference is None and not (arm == "ape" and ape_candidates):
        _log(f"[{ctx.task}] {arm}: needs the pmpo arm's row on this task; no {arm} row")
        return None
    if arm == "train_acc":
        return by_training_accuracy(lm, ctx, reference.pool), len(reference.pool), ()
    if arm == "gepa":
        return _gepa(lm, ctx, settings, reference)
    try:
        found = ape(lm, ctx.train, ape_candidates or reference.candidates, seed=settings.seed)
    except NoInstruction:  # a small model may write no parsable instruction at all: report it, keep the run going
        _log(f"[{ctx.task}] ape: no candidate instruction parsed from any proposal; no ape row")
        return None
    return found.best, len(found.candidates), ()


def training_set(arm: str, ctx: TaskContext) -> Dataset:
    """The examples an arm optimises on: the split's, and for pmpo_more_train as many again from the spare ones."""
    train = ctx.train
    if arm != "pmpo_more_train" or ctx.spare is None:
        return train
    more = ctx.spare.subset(list(range(min(len(train), len(ctx.spare)))))
    return replace(train, examples=train.examples + more.examples, rows=train.rows + more.rows, fingerprint="")


def pool_of(outcome: OptimizeResult) -> tuple[PoolEntry, ...]:
    """Every prompt a PMPO run scored over the whole training set (racing's dropped ones left out)."""
    return tuple(PoolEntry(c.prompt, c.loss, c.accuracy) for c in outcome.candidates if not c.dropped)


def by_training_accuracy(lm: LoadedModel, ctx: TaskContext, pool: tuple[PoolEntry, ...]) -> str:
    """The pool's prompt with the best training accuracy; ties go to the lower loss.

    Multiple choice: acc from the loss's own forward passes (free). Otherwise greedy answers on the training set,
    one generation per example and prompt: the cost a selection by accuracy pays where the loss needs one pass.
    """

    def accuracy(entry: PoolEntry) -> float:
        if entry.accuracy is not None:
            return entry.accuracy
        found = evaluate(lm, entry.prompt, ctx.train, scorer=ctx.scorer)
        return found.accuracy or 0.0

    return max(pool, key=lambda e: (accuracy(e), -e.loss)).prompt


def _gepa(lm, ctx: TaskContext, settings: BenchSettings, reference: ArmResult):
    try:
        from gepa_arm import GepaNotInstalled, gepa_search
    except ImportError:
        _log(f"[{ctx.task}] gepa: benchmarks/gepa_arm.py is missing; no gepa row")
        return None
    try:
        prompt, candidates = gepa_search(
            lm, ctx.train, ctx.initial, token_budget=reference.cost.forward_tokens, seed=settings.seed
        )
    except GepaNotInstalled as e:
        _log(f"[{ctx.task}] gepa: {e}; no gepa row")
        return None
    return prompt, candidates, ()


def arm_result(
    ctx: TaskContext,
    arm: str,
    prompt: str,
    candidates: int,
    ev: Evaluation,
    cost: Cost,
    pool: tuple[PoolEntry, ...] = (),
) -> ArmResult:
    """One row of the report from an arm's held-out evaluation and its paired differences to the initial prompt."""
    cmp = None if arm == INITIAL else evaluation.compare(ctx.base, ev)

    def delta(name):
        return getattr(cmp, name) if cmp is not None else None

    return ArmResult(
        task=ctx.task,
        shared=ctx.shared,
        arm=arm,
        prompt=prompt,
        candidates=candidates,
        loss=Measure(ev.loss, delta("loss")),
        acc=Measure(ev.option_accuracy, delta("option_accuracy")),
        acc_norm=Measure(ev.option_accuracy_norm, delta("option_accuracy_norm")),
        gen_acc=Measure(ev.accuracy, delta("accuracy")),
        cost=cost,
        diffs=None if arm == INITIAL else example_diffs(ctx.base, ev),
        pool=pool,
    )


def example_diffs(base: Evaluation, final: Evaluation) -> ExampleDiffs:
    """Per held-out example, final - initial, for loss, acc and acc_norm (generation accuracy without options)."""

    def minus(before, after) -> tuple[float, ...]:
        return tuple(float(a) - float(b) for b, a in zip(before, after))

    gen = (base.example_correct or (), final.example_correct or ())
    acc = (base.example_option_correct, final.example_option_correct) if base.example_option_correct else gen
    norm = (
        (base.example_option_correct_norm, final.example_option_correct_norm)
        if base.example_option_correct_norm
        else gen
    )
    return ExampleDiffs(loss=minus(base.example_losses, final.example_losses), acc=minus(*acc), acc_norm=minus(*norm))


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
    return tuple(a for a in ARMS if a in wanted)  # pmpo first: ape, train_acc and gepa build on its rows


def pmpo_arm(arm: str, settings: BenchSettings) -> tuple[OptimizerConfig | None, ScorerSettings]:
    """The optimizer and scorer settings of a PMPO arm (the others differ from the defaults in one place)."""
    config = OptimizerConfig(iterations=settings.iterations, seed=settings.seed)
    if arm == "pmpo_strict":
        strict = SelectionSettings(gate_z=0.0, keep_accuracy=False, tempered_gate=False)
        return config.model_copy(update={"selection": strict}), ScorerSettings()
    if arm == "pmpo_demos":
        if "demonstrations" not in OptimizerConfig.model_fields:
            return None, ScorerSettings()
        return OptimizerConfig(
            iterations=settings.iterations, seed=settings.seed, demonstrations={"k": DEMOS_K}
        ), ScorerSettings()
    if arm == "pmpo_no_masking":
        return config.model_copy(update={"masking": False}), ScorerSettings()
    if arm == "pmpo_ce":
        return config, ScorerSettings(mc_objective="ce")
    if arm == "pmpo_racing":
        return config.model_copy(update={"racing": RacingSettings(enabled=True)}), ScorerSettings()
    if arm == "pmpo_z2":
        # z = 1 passes a pure-noise candidate one time in six; about twelve are compared each iteration.
        return config.model_copy(update={"selection": SelectionSettings(gate_z=2.0)}), ScorerSettings()
    if arm == "pmpo_n8":
        # A small rewriter rarely writes a better instruction: twice the draws, the gate keeps out the noise.
        return config.model_copy(update={"rewrite": RewriteSettings(n_variants=8)}), ScorerSettings()
    return config, ScorerSettings()


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="also write the whole report as JSON to PATH")
    p.add_argument("--tasks", help="comma-separated: BIG-bench sample names in --data-dir and/or builtin:NAME")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
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
