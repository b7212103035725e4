"""Cost curves: how a run's cost grows with its work, and the per-step cost model fitted from them.

    python benchmarks/bench_curves.py --threads 1                  # scorer and generation curves, fits, plots
    python benchmarks/bench_curves.py --threads 1 --quick          # smoke run: two points per curve
    python benchmarks/bench_curves.py --nightly 4,8,16 --workers 1,2   # also the refresh on a work pool (heavy)

With the bundled model (`load_model(ModelSettings())`), on the BIG-bench workload of bench_loss.py:

- the scorer's time against the prompt's length, with and without prefix reuse (reuse should keep it flat);
- against the number of examples (zero-shot and 3-shot prompts) and the number of candidates;
- greedy decoding (the held-out evaluation's answers) and sampled rewrites (the rewrite proposal) against the
  tokens they generate;
- optionally the nightly refresh's wall time against its number of prompts, with 1 and 2 process workers
  (bench_scale.py's harness: PostgreSQL, MLflow and Prefect servers, the tiny random model).

Every point is timed in wall and CPU seconds; with `--threads 1` CPU seconds are what the work costs on an idle
core, so the fits use them (wall seconds on a busy machine only add other processes' share). The fits are linear
in the model-work counters a run records (pmpo.models.usage: tokens scored, tokens generated), one per step, and
go with the points into one JSON (default benchmarks/results/cost_model.json); the plots go to docs/img/cost_*.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import Timer  # noqa: E402

from pmpo.data import split_dataset  # noqa: E402
from pmpo.models.generation import greedy  # noqa: E402
from pmpo.models.loading import ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer, ScorerSettings  # noqa: E402
from pmpo.text.rendering import render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    """Measure the curves, fit the cost model, write the JSON and the plots."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    report: dict = {
        "machine": _machine(),
        "command": "python benchmarks/bench_curves.py " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.replot:  # fits and plots again from the points in --json (a run cut short keeps what it measured)
        report = json.loads(out.read_text())
        report["fits"] = _fits(report["curves"])
        out.write_text(json.dumps(report, indent=2) + "\n")
        _plots(report, Path(args.img))
        print(json.dumps(report["fits"], indent=2))
        return
    if not args.skip_scorer:
        lm = load_model(ModelSettings())
        report["model"] = {"dtype": str(lm.dtype).removeprefix("torch."), "params": lm.model.num_parameters()}
        work = wl.build(args.task, 8, 40)
        report["workload"] = work.source
        report["curves"] = {}
        save = lambda: out.write_text(json.dumps(report, indent=2) + "\n")  # noqa: E731
        _curves(lm, work, quick, report["curves"], save)
        report["fits"] = _fits(report["curves"])
    if args.nightly:
        report["nightly"] = _nightly(
            [int(n) for n in args.nightly.split(",")], [int(w) for w in args.workers.split(",")]
        )
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    if args.merge and out.exists():  # keep the part of an earlier run this one skipped
        report = (
            json.loads(out.read_text())
            | {k: v for k, v in report.items() if k not in ("machine", "command")}
            | {"machine_" + ("nightly" if args.nightly else "scorer"): report["machine"]}
        )
    out.write_text(json.dumps(report, indent=2) + "\n")
    _plots(report, Path(args.img))
    print(json.dumps(report.get("fits", {}), indent=2))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--quick", action="store_true", help="two points per curve")
    p.add_argument("--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cost_model.json"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img"), help="folder of the PNG plots")
    p.add_argument("--nightly", default="", help="prompt counts of the nightly refresh, e.g. 4,8,16 (empty: skip)")
    p.add_argument("--workers", default="1,2", help="process worker counts of the nightly refresh")
    p.add_argument("--skip-scorer", action="store_true", help="only the nightly refresh")
    p.add_argument("--merge", action="store_true", help="add to the JSON already at --json instead of replacing it")
    p.add_argument("--replot", action="store_true", help="only fit and plot the points already in --json")
    return p.parse_args(argv)


def _machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],
    }


def _point(lm, run) -> dict:
    """Wall and CPU seconds of `run()` and the model work it did (pmpo.models.usage counters), best of two."""
    best = None
    for _ in range(2):  # other processes share the cores: keep the less disturbed of two runs
        before = lm.usage.snapshot()
        with Timer() as t:
            run()
        used = lm.usage.snapshot() - before
        if best is None or t.cpu < best["cpu_s"]:
            best = {
                "wall_s": t.wall,
                "cpu_s": t.cpu,
                "tokens_scored": used.tokens_scored,
                "tokens_generated": used.tokens_generated,
                "tokens_prefilled": used.tokens_prefilled,
            }
        if t.cpu > 1.5:  # long enough that a second run would not change the figure, only the time the curves take
            break
    return best


def _score(lm, prompts, examples, reuse: bool = True):
    """One loss matrix with a fresh scorer (its memo would make a repeat free)."""
    return lambda: Scorer(lm, ScorerSettings(reuse_prefix=reuse)).loss_matrix(list(prompts), examples)


def _prompt_of_length(lm, incumbent: str, filler: str, tokens: int) -> str:
    """The incumbent followed by the first `tokens` tokens of `filler` (repeated as needed)."""
    if tokens == 0:
        return incumbent
    ids = lm.tokenizer(filler, add_special_tokens=False)["input_ids"]
    ids = (ids * (tokens // len(ids) + 1))[:tokens]
    return f"{incumbent}\n\n{lm.tokenizer.decode(ids)}"


def _prefix_tokens(lm, prompt: str) -> int:
    return len(
        lm.tokenizer(render(lm.tokenizer, lm.placement, prompt, "").prefix, add_special_tokens=False)["input_ids"]
    )


def _curves(lm, work, quick: bool, curves: dict, save) -> None:
    """Measure every curve into `curves`, calling `save()` after each point (a run cut short keeps its points)."""
    incumbent, block = work.zero_shot[0], work.few_shot[0].removeprefix(work.zero_shot[0]).strip()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    curves |= {"prompt_length": [], "examples": [], "candidates": [], "greedy": [], "rewrite": []}

    examples10 = list(work.train[:10])
    for length in (0, 1000) if quick else (0, 250, 500, 1000):
        prompt = _prompt_of_length(lm, incumbent, block, length)
        row = {"prefix_tokens": _prefix_tokens(lm, prompt), "examples": len(examples10)}
        for reuse in (True, False):  # both in turn at each length: the ratio sees the same load
            row["reuse" if reuse else "no_reuse"] = _point(lm, _score(lm, [prompt], examples10, reuse))
        curves["prompt_length"].append(row)
        save()
        log(f"prompt {row['prefix_tokens']} tokens: {row['reuse']['cpu_s']:.2f} / {row['no_reuse']['cpu_s']:.2f} cpu-s")

    for n in (5, 40) if quick else (5, 10, 20, 40):
        row = {"examples": n}
        for name, prompts in (("zero_shot", work.zero_shot[:1]), ("few_shot", work.few_shot[:1])):
            row[name] = _point(lm, _score(lm, prompts, list(work.train[:n])))
        curves["examples"].append(row)
        save()
        log(f"{n} examples: {row['zero_shot']['cpu_s']:.2f} / {row['few_shot']['cpu_s']:.2f} cpu-s")

    for c in (1, 4) if quick else (1, 2, 4):
        row = {"candidates": c, "examples": len(examples10)}
        for name, prompts in (("zero_shot", work.zero_shot[:c]), ("few_shot", work.few_shot[:c])):
            row[name] = _point(lm, _score(lm, prompts, examples10))
        curves["candidates"].append(row)
        save()
        log(f"{c} candidates: {row['zero_shot']['cpu_s']:.2f} / {row['few_shot']['cpu_s']:.2f} cpu-s")

    # The held-out evaluation's answers: greedy decoding of rendered contexts, batched as pmpo.evaluation does.
    contexts = [render(lm.tokenizer, lm.placement, incumbent, e.input).text for e in work.train[:16]]
    for n, new in ((4, 16), (8, 4), (8, 32)):
        row = {"contexts": n, "max_new_tokens": new}
        row |= _point(lm, lambda n=n, new=new: greedy(lm, contexts[:n], max_new_tokens=new))
        curves["greedy"].append(row)
        save()
        log(f"greedy {n} x {new} new tokens: {row['cpu_s']:.2f} cpu-s, {row['tokens_generated']} generated")

    # The rewrite proposal: one request for one hard example, n_variants sampled replies (the loop sends hard_k).
    # Replies stop at the closing tag well before max_new_tokens, so the work grows with n_variants.
    from pmpo.rewriting.proposal import RewriteSettings, propose

    _, dataset = wl.load_task("object_counting")
    example = split_dataset(dataset, seed=0).train.examples[0]
    for n in (1, 4) if quick else (1, 2, 4):
        settings = RewriteSettings(n_variants=n)
        row = {"n_variants": n, "max_new_tokens": settings.max_new_tokens}
        run = lambda s=settings: propose(  # noqa: E731
            lm, prompt=incumbent, example=example, effects=(), task_description=work.description, settings=s, seed=1
        )
        row |= _point(lm, run)
        curves["rewrite"].append(row)
        save()
        log(f"rewrite {n} variants: {row['cpu_s']:.2f} cpu-s, {row['tokens_generated']} generated")


def _fit(x, y) -> dict:
    """y = a + b * x by least squares, with R^2."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    r2 = 1 - float(residual @ residual) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
    return {"a": float(a), "b": float(b), "r2": r2, "points": len(x)}


def _fits(curves: dict) -> dict:
    """The cost model: seconds = a + b * work, per step, from the points measured with prefix reuse."""
    c = {k: curves.get(k, []) for k in ("prompt_length", "examples", "candidates", "greedy", "rewrite")}
    fit = lambda x, y: _fit(x, y) if len(x) >= 2 else None  # noqa: E731
    scored = [r["reuse"] for r in c["prompt_length"]]
    scored += [r[w] for key in ("examples", "candidates") for r in c[key] for w in ("zero_shot", "few_shot")]
    scoring = fit([p["tokens_scored"] for p in scored], [p["cpu_s"] for p in scored])
    # One variable: with a few points a second one (context tokens) fits noise; their cost sits in `a`.
    greedy_fit = fit([p["tokens_generated"] for p in c["greedy"]], [p["cpu_s"] for p in c["greedy"]])
    rewrite = fit([p["tokens_generated"] for p in c["rewrite"]], [p["cpu_s"] for p in c["rewrite"]])
    length = [r["prefix_tokens"] for r in c["prompt_length"]]
    x = lambda fit, text: None if fit is None else fit | {"x": text}  # noqa: E731
    return {
        "unit": "CPU seconds with --threads 1 (an idle core's wall seconds)",
        # Candidate scoring and masking analysis are both the scorer: masking scores one ablated prompt per unit.
        "scoring": x(scoring, "tokens_scored (each prompt's prefix once + every example's input and target)"),
        "candidate_scoring": {"same_as": "scoring", "tokens_scored": "C * (prefix + sum of example tokens)"},
        "masking_analysis": {"same_as": "scoring", "tokens_scored": "U * (prefix + sum of example tokens), U units"},
        "rewrite_proposal": x(
            rewrite,
            "tokens_generated of one request (n_variants samples, each prefilling the request); hard_k a round",
        ),
        "heldout_evaluation": {
            "loss": "scoring, on the held-out examples",
            "generation": x(greedy_fit, "tokens_generated (greedy answers of 4-8 contexts of ~70 tokens, batched)"),
        },
        "prompt_length": {
            "reuse": fit(length, [r["reuse"]["cpu_s"] for r in c["prompt_length"]]),
            "no_reuse": fit(length, [r["no_reuse"]["cpu_s"] for r in c["prompt_length"]]),
            "x": "prefix tokens, 10 examples",
        },
    }


def _nightly(prompt_counts: list[int], worker_counts: list[int]) -> list[dict]:
    """The refresh on a work pool (bench_scale.py's harness) for each prompt count and worker count."""
    import bench_scale as bs

    os.environ.update(bs.base_env(Path(tempfile.mkdtemp(prefix="pmpo-curves-"))))
    from testkit.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="pmpo-curves-"))
    model_dir = build_tiny_model(work / "tiny-model")
    out = []
    with bs.running_postgres() as url, bs.stack(work / "pg", url) as s:
        bs.deploy(s, bs.base_env(work / "pg", PREFECT_API_URL=f"{s.settings.prefect_url}/api"))
        for n in prompt_counts:
            for w in worker_counts:
                print(f"nightly refresh: {n} prompts, {w} worker(s)", file=sys.stderr, flush=True)
                folder = work / f"night-{n}-{w}"
                folder.mkdir()
                run = bs.nightly_on_pool(s, model_dir, folder, n, w, 60, tag=f"n{n}w{w}")
                out.append({"prompts": n, **run, "load_average": os.getloadavg()[0]})
    return out


def _plots(report: dict, folder: Path) -> None:
    """PNG plots of every curve measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    curves, when = (
        report.get("curves") or {},
        f"{report['machine']['date']}, --threads {report['machine']['torch_threads']}",
    )
    if curves.get("prompt_length"):
        rows = curves["prompt_length"]
        x = [r["prefix_tokens"] for r in rows]
        _plot(
            plt,
            folder / "cost_prompt_length.png",
            f"Scoring 1 prompt x {rows[0]['examples']} examples ({when})",
            "prompt (prefix) tokens",
            [
                (x, [r["reuse"]["cpu_s"] for r in rows], "prefix reuse (default)"),
                (x, [r["no_reuse"]["cpu_s"] for r in rows], "no reuse"),
            ],
        )
    for key, label in (("examples", "examples (1 prompt)"), ("candidates", "candidates (10 examples each)")):
        if rows := curves.get(key):
            x = [r[key] for r in rows]
            _plot(
                plt,
                folder / f"cost_{key}.png",
                f"Scoring against {key} ({when})",
                label,
                [
                    (x, [r["zero_shot"]["cpu_s"] for r in rows], "zero-shot prompt"),
                    (x, [r["few_shot"]["cpu_s"] for r in rows], "3-shot prompt"),
                ],
            )
    if curves.get("greedy"):
        _plot(
            plt,
            folder / "cost_generation.png",
            f"Generation against tokens generated ({when})",
            "tokens generated",
            [
                ([r["tokens_generated"] for r in curves[k]], [r["cpu_s"] for r in curves[k]], label)
                for k, label in (
                    ("greedy", "greedy answers (4-16 contexts)"),
                    ("rewrite", "rewrite proposal (1-4 variants)"),
                )
                if curves.get(k)
            ],
        )
    if report.get("nightly"):
        runs = report["nightly"]
        lines = []
        for w in sorted({r["workers"] for r in runs}):
            mine = [r for r in runs if r["workers"] == w]
            lines.append(([r["prompts"] for r in mine], [r["wall_s"] for r in mine], f"{w} worker(s)"))
        _plot(
            plt, folder / "cost_nightly.png", "Nightly refresh on a work pool (wall)", "prompts", lines, "wall seconds"
        )


def _plot(plt, path: Path, title: str, xlabel: str, lines, ylabel: str = "CPU seconds") -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for x, y, label in lines:
        ax.plot(x, y, marker="o", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
