"""The quality benchmark's report: means over tasks, the three targets, table, JSON, MLflow record, CLI parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import quality_report as qr  # noqa: E402

from pmpo.evaluation.stats import Interval  # noqa: E402


def _iv(estimate: float, half: float = 0.05) -> Interval:
    return Interval(estimate, estimate - half, estimate + half)


def _hits(gain: float, n: int = 100) -> tuple[float, ...]:
    """Per-example differences of 0/+1/-1 whose mean is `gain` (to the nearest example)."""
    k = round(abs(gain) * n)
    return (1.0 if gain > 0 else -1.0,) * k + (0.0,) * (n - k)


def _row(task, arm, *, acc_norm=None, gen=0.5, d_headline=0.0, loss=2.0, d_loss=-0.1, tokens=1000):
    initial = arm == qr.INITIAL
    mc = acc_norm is not None
    diffs = (
        None if initial else qr.ExampleDiffs(loss=(d_loss,) * 100, acc=_hits(d_headline), acc_norm=_hits(d_headline))
    )
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
        diffs=diffs,
        pool=(qr.PoolEntry("p", 1.0, 0.5),) if arm == qr.PMPO else (),
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


def _target(report, start):
    return next(t for t in report.targets if t.name.startswith(start))


def test_headline_is_acc_norm_with_options_else_generation_accuracy():
    assert _row("navigate", "pmpo", acc_norm=0.7, gen=0.1).headline.value == 0.7
    assert _row("counting", "pmpo", gen=0.3).headline.value == 0.3


def test_summary_means_over_tasks_totals_costs_and_pools_shared_examples():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04, 0.06]))
    pmpo = next(a for a in report.summary if a.arm == qr.PMPO)
    assert [a.arm for a in report.summary] == [qr.INITIAL, qr.PMPO, "ape"]  # arms that ran, in ARMS order
    assert pmpo.tasks == 7
    assert pmpo.headline_delta == pytest.approx((0.10 + 0.05 + 0.0 + 0.02 - 0.01 + 0.04 + 0.06) / 7)
    assert pmpo.acc_norm == pytest.approx(0.5 + (0.10 + 0.05 + 0.0 - 0.01) / 4)  # multiple-choice tasks only
    assert pmpo.loss_delta == pytest.approx(-0.1) and pmpo.forward_tokens == 7000 and pmpo.wall_s == 21.0
    # Pooled over the six shared tasks' 600 examples, the built-in left out.
    assert pmpo.pooled_acc_norm.estimate == pytest.approx((0.10 + 0.05 + 0.0 + 0.02 - 0.01 + 0.04) / 6)
    assert pmpo.pooled_acc_norm.low < pmpo.pooled_acc_norm.estimate < pmpo.pooled_acc_norm.high
    initial = report.summary[0]
    assert initial.headline_delta is None and initial.forward_tokens == 0 and initial.pooled_acc is None


def test_pooled_interval_resamples_within_tasks_and_weights_by_examples():
    constant = qr.pooled_interval([[1.0] * 10, [0.0] * 30])
    assert constant.estimate == pytest.approx(0.25) and constant.low == constant.high == pytest.approx(0.25)
    mixed = qr.pooled_interval([_hits(0.5), _hits(-0.5)])
    assert mixed.estimate == pytest.approx(0.0) and mixed.low < -0.05 and mixed.high > 0.05
    assert qr.pooled_interval([]) is None


def test_targets_met_when_pmpo_gains_surely_no_task_loses_and_beats_a_costlier_peer():
    report = _report(_results([0.06, 0.05, 0.04, 0.05, 0.03, 0.04], ape_acc=0.5))
    for start in ("PMPO mean acc +3", "PMPO mean acc_norm +3", "no task loses", "PMPO held-out loss"):
        assert _target(report, start).met, _target(report, start)
    assert "+4.5 points" in _target(report, "PMPO mean acc_norm").detail
    versus_ape = _target(report, "PMPO mean acc_norm >= ape's")
    assert versus_ape.met and "6,000 vs 60,000" in versus_ape.detail
    assert not _target(report, "PMPO mean acc_norm >= gepa's").met  # no gepa rows: not measured, so not met


@pytest.mark.parametrize(
    "gains, why",
    [
        ([0.02] * 6, "+2.0 points"),  # sure, but too small
        ([0.30, -0.30, 0.30, -0.28, 0.05, 0.05], "["),  # a big mean whose interval crosses zero
    ],
)
def test_gain_target_not_met(gains, why):
    gain = _target(_report(_results(gains)), "PMPO mean acc_norm +3")
    assert not gain.met and why in gain.detail


def test_no_task_loses_names_the_task_that_lost_more_than_two_points():
    target = _target(_report(_results([0.10, 0.10, -0.03, 0.10, 0.10, 0.10])), "no task loses")
    assert not target.met and "navigate -3.0" in target.detail


def test_peer_target_needs_both_accuracy_and_no_more_tokens():
    better_ape = _target(_report(_results([0.04] * 6, ape_acc=0.6)), "PMPO mean acc_norm >= ape's")
    assert not better_ape.met  # PMPO 0.54 < APE 0.6
    costly = _target(_report(_results([0.04] * 6, pmpo_tokens=20_000)), "PMPO mean acc_norm >= ape's")
    assert not costly.met and "120,000 vs 60,000" in costly.detail


def test_loss_target_names_the_task_where_loss_did_not_fall():
    loss = _target(
        _report(_results([0.04] * 6, loss_deltas=[-0.1, -0.1, 0.02, -0.1, -0.1, -0.1, 0.5])), "PMPO held-out"
    )
    assert not loss.met and "5 of 6" in loss.detail and "not on navigate" in loss.detail


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
    assert "NOT met (acc_norm" in text  # APE wins on accuracy here


def test_markdown_table_has_one_row_per_arm_with_means_and_pooled_intervals():
    text = qr.markdown(_report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04])))
    lines = text.splitlines()
    assert lines[0].startswith("| arm | tasks | held-out loss") and len(lines) == 2 + 3
    assert lines[3].startswith("| pmpo | 7 | 2.000 | -0.100 | 0.529 | +0.029 | +3.3 [")
    assert lines[3].endswith("| 7,000 | 21 |")


def test_json_round_trips_every_row_for_a_resumed_run():
    report = _report(_results([0.10, 0.05, 0.0, 0.02, -0.01, 0.04]))
    data = json.loads(json.dumps(qr.to_json(report)))
    assert len(data["results"]) == 21
    row = next(r for r in data["results"] if r["task"] == "navigate" and r["arm"] == "pmpo")
    assert row["cost"]["forward_tokens"] == 1000 and row["acc_norm"]["delta"]["high"] == pytest.approx(0.05)
    assert row["headline"]["value"] == 0.5
    assert [t["met"] for t in data["targets"]] == [t.met for t in report.targets]
    assert qr.results_from_json(data) == list(report.results)


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


def test_cli_arms_are_checked_and_ordered_with_pmpo_before_the_arms_built_on_it():
    import bench_quality

    assert bench_quality._arms("gepa,ape,train_acc,pmpo,initial") == ("initial", "pmpo", "train_acc", "ape", "gepa")
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


def _evaluation(loss, option_correct, prompt="p"):
    from pmpo.evaluation.heldout import Evaluation

    n = len(option_correct)
    share = sum(option_correct) / n
    return Evaluation(
        prompt=prompt,
        n_examples=n,
        loss=sum(loss) / n,
        loss_per_token=0.0,
        accuracy=None,
        option_accuracy=share,
        option_accuracy_norm=share,
        example_losses=tuple(loss),
        example_option_correct=tuple(option_correct),
        example_option_correct_norm=tuple(option_correct),
    )


def test_arm_result_keeps_paired_per_example_differences():
    import bench_quality

    base = _evaluation([1.0, 1.0, 1.0, 1.0], [True, False, False, True])
    final = _evaluation([0.5, 1.0, 2.0, 1.0], [True, True, False, False])
    ctx = SimpleNamespace(task="navigate", shared=True, base=base)
    row = bench_quality.arm_result(ctx, "pmpo", "p2", 13, final, qr.Cost(1, 2, 3, 4.0))
    assert row.diffs.loss == (-0.5, 0.0, 1.0, 0.0) and row.diffs.acc_norm == (0.0, 1.0, 0.0, -1.0)
    assert row.acc_norm.value == 0.5 and row.acc_norm.delta.estimate == pytest.approx(0.0)
    assert bench_quality.arm_result(ctx, "initial", "p", 1, base, row.cost).diffs is None


def test_training_accuracy_picks_the_most_accurate_prompt_and_breaks_ties_by_loss():
    import bench_quality

    pool = (qr.PoolEntry("a", 1.0, 0.6), qr.PoolEntry("b", 0.9, 0.7), qr.PoolEntry("c", 0.8, 0.7))
    assert bench_quality.by_training_accuracy(None, None, pool) == "c"  # multiple choice: no model call


def test_strict_arm_is_the_papers_selection():
    import bench_quality

    settings = qr.BenchSettings(("t",), ("pmpo_strict",), 2, 10, 0, "m", False)
    config, _ = bench_quality.pmpo_arm("pmpo_strict", settings)
    assert (config.selection.gate_z, config.selection.keep_accuracy, config.iterations) == (0.0, False, 2)
    assert not config.selection.tempered_gate


@pytest.mark.parametrize(
    ("arm", "block", "changed"),
    [
        ("pmpo_racing", "racing", lambda arm, default: arm.enabled and not default.enabled),
        ("pmpo_z2", "selection", lambda arm, default: arm.gate_z == 2.0 > default.gate_z),
        ("pmpo_n8", "rewrite", lambda arm, default: arm.n_variants == 2 * default.n_variants),
    ],
)
def test_an_arm_is_the_defaults_with_one_block_changed(arm, block, changed):
    import bench_quality

    settings = qr.BenchSettings(("t",), (arm,), 2, 10, 0, "m", False)
    config, _ = bench_quality.pmpo_arm(arm, settings)
    default, _ = bench_quality.pmpo_arm("pmpo", settings)
    assert changed(getattr(config, block), getattr(default, block))
    assert config.model_copy(update={block: getattr(default, block)}) == default


def test_arms_built_on_pmpo_are_refused_without_it_before_any_model_loads(monkeypatch):
    import bench_quality

    monkeypatch.setattr(bench_quality, "load_model", lambda s: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit, match="ape, train_acc take their budget from the pmpo arm"):
        bench_quality.main(["--arms", "initial,ape,train_acc", "--tasks", "builtin:sentiment", "--no-mlflow"])


def test_resume_refuses_a_file_written_with_other_settings(tmp_path):
    import bench_quality

    report = _report(_results([0.1] * 6))
    path = tmp_path / "q.json"
    path.write_text(json.dumps(qr.to_json(report)))
    same = report.settings
    assert len(bench_quality._resumed(str(path), same)) == 21
    other = qr.BenchSettings(same.tasks, same.arms, 3, same.heldout, same.seed, same.model, same.quick)
    with pytest.raises(SystemExit, match="other settings \\(iterations\\)"):
        bench_quality._resumed(str(path), other)


def test_search_reports_an_ape_run_without_parsable_instructions_as_none(monkeypatch):
    import ape
    import bench_quality

    def no_instruction(*args, **kwargs):
        raise ape.NoInstruction("APE has no candidate")

    monkeypatch.setattr(bench_quality, "ape", no_instruction)
    settings = qr.BenchSettings(("t",), ("initial", "ape"), 1, 10, 0, "m", True)
    ctx = SimpleNamespace(task="t", train=None, initial="p")
    assert bench_quality.search(None, "ape", ctx, settings, None, ape_candidates=4) is None


def test_more_train_adds_as_many_test_examples_as_the_heldout_draw_left_out(tiny_lm, tmp_path):
    import json

    import bench_quality

    rows = [{"input": f"Is {i} even?", "target": "Yes" if i % 2 else "No", "options": ["Yes", "No"]} for i in range(60)]
    (tmp_path / "even.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = qr.BenchSettings(("even",), ("pmpo_more_train",), 1, 20, 0, "m", False)
    ctx = bench_quality.task_context(tiny_lm, "even", settings, tmp_path)
    train, more = bench_quality.training_set("pmpo", ctx), bench_quality.training_set("pmpo_more_train", ctx)
    assert train is ctx.train and len(more) == 2 * len(train)
    added = {e.input for e in more.examples[len(train) :]}
    assert not added & {e.input for e in ctx.heldout.examples} and not added & {e.input for e in train.examples}
    assert more.rows[: len(train)] == train.rows and len(set(more.rows)) == len(more)  # each names its file row
