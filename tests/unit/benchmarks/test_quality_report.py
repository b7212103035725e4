"""The quality benchmark's report: means over tasks, the three targets, table, JSON, MLflow record, CLI parsing."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import quality_report as qr  # noqa: E402

try:
    from pmpo.evaluation.stats import Interval
except ImportError:  # pmpo.evaluation.stats comes with the held-out evaluation branch; same fields as agreed

    @dataclass(frozen=True)
    class Interval:  # type: ignore[no-redef]
        estimate: float
        low: float
        high: float


def _iv(estimate: float, half: float = 0.05) -> Interval:
    return Interval(estimate, estimate - half, estimate + half)


def _row(task, arm, *, acc_norm=None, gen=0.5, d_headline=0.0, loss=2.0, d_loss=-0.1, tokens=1000):
    initial = arm == qr.INITIAL
    mc = acc_norm is not None
    return qr.ArmResult(
        task=task,
        shared=not task.startswith("builtin:"),
        arm=arm,
        prompt=f"{arm} prompt",
        candidates=13,
        loss=qr.Measure(loss, None if initial else _iv(d_loss)),
        acc=qr.Measure(acc_norm if mc else None, None if initial or not mc else _iv(d_headline)),
        acc_norm=qr.Measure(acc_norm, None if initial or not mc else _iv(d_headline)),
        gen_acc=qr.Measure(gen, None if initial else _iv(0.0 if mc else d_headline)),
        cost=qr.Cost(forward_passes=10, tokens_scored=tokens - 100, tokens_generated=100, wall_s=3.0),
    )


SHARED = ["date", "logic", "navigate", "counting", "sports", "sorting"]


def _results(gains, *, pmpo_tokens=1000, ape_tokens=10_000, ape_acc=0.5, loss_deltas=None):
    """Six shared tasks (four multiple choice, two generation) + one built-in; pmpo gains as given."""
    rows = []
    for i, task in enumerate(SHARED + ["builtin:sentiment"]):
        mc = task in ("date", "logic", "navigate", "sports")
        gain = gains[i] if i < len(gains) else 0.0
        d_loss = loss_deltas[i] if loss_deltas else -0.1
        rows += [
            _row(task, qr.INITIAL, acc_norm=0.5 if mc else None, tokens=0),
            _row(
                task,
                qr.PMPO,
                acc_norm=0.5 + gain if mc else None,
                gen=0.5 if mc else 0.5 + gain,
                d_headline=gain,
                d_loss=d_loss,
                tokens=pmpo_tokens,
            ),
            _row(
                task,
                "ape",
                acc_norm=ape_acc if mc else None,
                gen=0.5 if mc else ape_acc,
                d_headline=ape_acc - 0.5,
                tokens=ape_tokens,
            ),
        ]
    return rows


def _report(rows):
    settings = qr.BenchSettings(
        tasks=tuple(dict.fromkeys(r.task for r in rows)),
        arms=qr.ARMS,
        iterations=2,
        heldout=100,
        seed=0,
        model="tiny@abc",
        quick=False,
    )
    return qr.build_report(settings, {"cores": 2}, rows)


def test_headline_is_acc_norm_with_options_else_generation_accuracy():
    assert _row("navigate", "pmpo", acc_norm=0.7, gen=0.1).headline.value == 0.7
    assert _row("counting", "pmpo", gen=0.3).headline.value == 0.3


def test_summary_means_over_tasks_and_totals_costs():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04, 0.06]))
    pmpo = next(a for a in report.summary if a.arm == qr.PMPO)
    assert [a.arm for a in report.summary] == [qr.INITIAL, qr.PMPO, "ape"]  # arms that ran, in ARMS order
    assert pmpo.tasks == 7
    assert pmpo.headline_delta == pytest.approx((0.10 + 0.05 + 0.0 + 0.02 - 0.01 + 0.04 + 0.06) / 7)
    assert pmpo.acc_norm == pytest.approx(0.5 + (0.10 + 0.05 + 0.0 - 0.01) / 4)  # multiple-choice tasks only
    assert pmpo.loss_delta == pytest.approx(-0.1) and pmpo.forward_tokens == 7000 and pmpo.wall_s == 21.0
    initial = report.summary[0]
    assert initial.headline_delta is None and initial.forward_tokens == 0


def test_targets_met_when_pmpo_wins_cheaply_and_loss_falls():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04], ape_acc=0.5))
    gain, versus_ape, loss = report.targets
    assert gain.met and "5 of 6 shared tasks (need 5)" in gain.detail and "+3.3 points" in gain.detail
    assert versus_ape.met and "0.10x" in versus_ape.detail
    assert loss.met and "7 of 7 tasks (7 with the interval below 0)" in loss.detail


@pytest.mark.parametrize(
    "gains, why",
    [
        ([0.10, 0.10, 0.10, 0.10, -0.01, -0.01], "4 of 6 shared tasks"),  # too few wins, though a big mean gain
        ([0.02, 0.02, 0.02, 0.02, 0.02, 0.02], "+2.0 points"),  # wins everywhere, mean gain too small
    ],
)
def test_gain_target_not_met(gains, why):
    gain = _report(_results(gains)).targets[0]
    assert not gain.met and why in gain.detail


def test_ape_target_needs_both_accuracy_and_a_fifth_of_the_compute():
    better_ape = _report(_results([0.04] * 6, ape_acc=0.6)).targets[1]
    assert not better_ape.met  # PMPO 0.54 < APE 0.6
    costly = _report(_results([0.04] * 6, pmpo_tokens=3000, ape_tokens=10_000)).targets[1]
    assert not costly.met and "0.30x, need <= 0.20x" in costly.detail


def test_loss_target_names_the_task_where_loss_did_not_fall():
    loss = _report(_results([0.04] * 6, loss_deltas=[-0.1, -0.1, 0.02, -0.1, -0.1, -0.1, -0.1])).targets[2]
    assert not loss.met and "6 of 7" in loss.detail and "not on navigate" in loss.detail


def test_targets_say_not_measured_without_the_arms():
    rows = [r for r in _results([0.1] * 6) if r.arm == qr.INITIAL]
    assert all(not t.met and t.detail.startswith("not measured") for t in _report(rows).targets)


def test_table_shows_each_task_and_arm_with_paired_intervals_and_target_verdicts():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04], ape_acc=0.7))
    text = qr.table(report)
    lines = text.splitlines()
    navigate_pmpo = next(ln for ln in lines if ln.startswith("navigate") and " pmpo " in ln)
    assert "0.500 +0.000 [-0.050, +0.050]" in navigate_pmpo  # acc_norm with its paired delta and interval
    assert "1,000" in navigate_pmpo  # forward tokens
    assert sum(ln.split()[:1] == ["builtin:sentiment"] for ln in lines) == 3
    assert "met (5 of 6 shared tasks" in text and "NOT met (acc_norm" in text  # APE wins on accuracy here


def test_markdown_table_has_one_row_per_arm_with_means():
    text = qr.markdown(_report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04])))
    lines = text.splitlines()
    assert lines[0].startswith("| arm | held-out loss") and len(lines) == 2 + 3
    assert lines[3] == "| pmpo | 2.000 | -0.100 | 0.529 | +0.029 | 7,000 | 21 |"


def test_json_carries_every_row_forward_tokens_and_targets():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04]))
    data = json.loads(json.dumps(qr.to_json(report)))
    assert len(data["results"]) == 21
    row = next(r for r in data["results"] if r["task"] == "navigate" and r["arm"] == "pmpo")
    assert row["cost"]["forward_tokens"] == 1000 and row["acc_norm"]["delta"]["high"] == pytest.approx(0.05)
    assert row["headline"]["value"] == 0.5
    assert [t["met"] for t in data["targets"]] == [t.met for t in report.targets]
    assert data["settings"]["model"] == "tiny@abc"


def test_table_columns_are_aligned_and_initial_has_no_delta():
    cols = qr.table_columns(_report(_results([0.1] * 6)))
    assert {len(v) for v in cols.values()} == {21}
    first = cols["arm"].index(qr.INITIAL)
    assert cols["acc_norm_delta_estimate"][first] is None and cols["loss_delta_low"][first + 1] == pytest.approx(-0.15)


def test_mlflow_run_holds_params_summary_metrics_table_and_plot(tmp_path):
    import mlflow
    import quality_mlflow

    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = quality_mlflow.log_run(report, uri)
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert mlflow.MlflowClient(uri).get_experiment(run.info.experiment_id).name == "pmpo-quality"
    assert run.data.params["iterations"] == "2" and run.data.params["model"] == "tiny@abc"
    assert run.data.metrics["pmpo.acc_norm_delta"] == pytest.approx(0.2 / 7)
    assert run.data.metrics["target1_met"] == 1.0
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}
    assert {"quality_table.json", "quality_report.json", "acc_norm_delta.png"} <= artifacts


def test_cli_arms_are_checked_and_ordered_with_ape_last():
    import bench_quality

    assert bench_quality._arms("ape,pmpo,initial") == ("initial", "pmpo", "ape")
    with pytest.raises(SystemExit, match="unknown arm.*pmpo_fast"):
        bench_quality._arms("pmpo,pmpo_fast")


def test_cli_quick_defaults_and_task_choice(tmp_path):
    import bench_quality

    (tmp_path / "navigate.jsonl").write_text('{"input": "x", "target": "True", "options": ["True", "False"]}\n')
    args = bench_quality._parse(["--quick", "--data-dir", str(tmp_path)])
    assert (args.iterations, args.heldout) == (1, 40) and bench_quality._tasks(args) == list(bench_quality.QUICK_TASKS)
    full = bench_quality._parse(["--data-dir", str(tmp_path), "--iterations", "3"])
    assert (full.iterations, full.heldout) == (3, 100)
    assert bench_quality._tasks(full) == ["navigate", "builtin:sentiment", "builtin:arithmetic"]
    with pytest.raises(SystemExit, match="'nosuch' is neither a built-in nor a file"):
        bench_quality.load_task("nosuch", tmp_path)


def test_arm_result_maps_evaluation_fields_to_report_measures():
    import bench_quality

    ev = SimpleNamespace(loss=1.5, option_accuracy=0.6, option_accuracy_norm=0.7, accuracy=0.4)
    cmp = SimpleNamespace(loss=_iv(-0.2), option_accuracy=_iv(0.1), option_accuracy_norm=_iv(0.2), accuracy=_iv(0.3))
    row = bench_quality.arm_result("navigate", True, "pmpo", "p", 13, ev, cmp, qr.Cost(1, 2, 3, 4.0))
    assert (row.loss.value, row.acc.value, row.acc_norm.value, row.gen_acc.value) == (1.5, 0.6, 0.7, 0.4)
    assert [m.delta.estimate for m in (row.loss, row.acc, row.acc_norm, row.gen_acc)] == [-0.2, 0.1, 0.2, 0.3]
    assert bench_quality.arm_result("navigate", True, "initial", "p", 1, ev, None, row.cost).acc_norm.delta is None


def test_ape_without_a_budget_is_refused_before_any_model_loads(monkeypatch):
    import bench_quality

    monkeypatch.setattr(bench_quality, "load_model", lambda s: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit, match="ape takes its budget from a pmpo arm"):
        bench_quality.main(["--arms", "initial,ape", "--tasks", "builtin:sentiment", "--no-mlflow"])


def test_search_reports_an_ape_run_without_parsable_instructions_as_none(monkeypatch):
    import ape
    import bench_quality

    def no_instruction(*args, **kwargs):
        raise ape.NoInstruction("APE has no candidate")

    monkeypatch.setattr(bench_quality, "ape", no_instruction)
    settings = qr.BenchSettings(("t",), ("initial", "ape"), 1, 10, 0, "m", True)
    assert bench_quality.search(None, "ape", "p", None, settings, ape_budget=4) is None
