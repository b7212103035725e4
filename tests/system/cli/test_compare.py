"""Comparing prompt versions: the word diff, where the held-out data comes from, and `pmpo compare` on two
registered versions (both held-out losses, the diff, and the comparison run in MLflow)."""

from __future__ import annotations

import json

import pytest

from pmpo.evaluation.draw import heldout_draw
from pmpo_cli.main import main

# The flows (and so prefect and mlflow) are imported inside the tests: imported while collecting, they would set
# up their logging before the CLI tests can quiet it.

OLD = "Read the review. Answer with one word."
NEW = "Read the review carefully. Answer positive or negative."


@pytest.mark.parametrize(
    ("old", "new", "diff"),
    [
        ("Read the text.", "Read the review carefully.", "Read the [-text.-] {+review carefully.+}"),
        ("a b c", "a c", "a [-b-] c"),
        ("a c", "a b c", "a {+b+} c"),
        ("same words", "same  words", "same words"),  # whitespace is not a word
        (OLD, NEW, "Read the [-review.-] {+review carefully.+} Answer [-with one word.-] {+positive or negative.+}"),
    ],
)
def test_word_diff_marks_removed_and_added_words(old, new, diff):
    from flows.compare import word_diff

    assert word_diff(old, new) == diff


def _setup(model_dir):
    from flows.config import DataConfig, EvalConfig, EvaluateConfig
    from pmpo.models.settings import ModelSettings

    return EvaluateConfig(
        data=DataConfig(source="builtin:sentiment", limit=30),
        model=ModelSettings(spec=str(model_dir), dtype="float32"),
        eval=EvalConfig(max_examples=6, generate=False),
    )


def test_versions_from_pmpo_optimize_are_judged_on_their_runs_data(pmpo_home, tiny_model_dir):
    from flows.config import DataConfig, OptimizeConfig
    from flows.heldout import recorded_setup, setup_of
    from tasks.mlflow import prompts, runs, writes

    config = OptimizeConfig(data=DataConfig(source="builtin:arithmetic", limit=20), seed=4, train_cap=5)
    run = runs.start_run("arith", "key", "a", params={}, tags={})
    writes.log_text(run, config.model_dump_json(), "config.json")
    v = prompts.register("arith", "Add.", "from a run", {"run_id": run.run_id})

    assert recorded_setup(prompts.get_version("arith", v)) == setup_of(config)
    bare = prompts.register("arith", "Sum.", "no record", {})
    assert recorded_setup(prompts.get_version("arith", bare)) is None


@pytest.mark.usefixtures("prefect_harness")
def test_pmpo_compare_prints_both_losses_and_the_diff(capsys, tmp_path, pmpo_home, tiny_model_dir, tiny_lm):
    from flows.compare import word_diff
    from flows.heldout import SETUP_TAG, setup_tag
    from pmpo.data import load_dataset, split_dataset
    from pmpo.evaluation.heldout import evaluate
    from tasks.mlflow import prompts, store

    setup = _setup(tiny_model_dir)
    v1 = prompts.register("sent", OLD, "first", {SETUP_TAG: setup_tag(setup)})
    v2 = prompts.register("sent", NEW, "second", {SETUP_TAG: setup_tag(setup)})
    prompts.set_alias("sent", "production", v1)
    # The flows judge a seeded draw of the test split, stratified by label (pmpo.evaluation.draw), not its first 6.
    heldout = heldout_draw(split_dataset(load_dataset("builtin:sentiment", limit=30), seed=0).test, 6, seed=0)
    expected = {p: evaluate(tiny_lm, p, heldout, generate=False).loss for p in (OLD, NEW)}
    assert f"{expected[OLD]:.4f}" != f"{expected[NEW]:.4f}"  # else the table could not show both

    out = tmp_path / "comparison.json"
    rc = main(["compare", "sent", "--output", str(out)])  # default: production vs latest
    shown = capsys.readouterr().out

    assert rc == 0
    assert f"{expected[OLD]:.4f}" in shown and f"{expected[NEW]:.4f}" in shown
    assert word_diff(OLD, NEW) in shown
    result = json.loads(out.read_text())
    assert [(r["version"], r["aliases"]) for r in result["rows"]] == [(v1, ["production"]), (v2, [])]
    assert [r["score"]["loss"] for r in result["rows"]] == pytest.approx([expected[OLD], expected[NEW]], rel=1e-5)
    run = store.client().get_run(result["run_id"])
    assert run.data.tags["pmpo.kind"] == "compare" and run.info.status == "FINISHED"
    assert run.data.metrics[f"loss_v{v2}"] == pytest.approx(expected[NEW], rel=1e-5)
    linked = {(p["name"], int(p["version"])) for p in json.loads(run.data.tags["mlflow.linkedPrompts"])}
    assert linked == {("sent", v1), ("sent", v2)}
    assert {"comparison.json", "comparison.png"} <= {a.path for a in store.client().list_artifacts(run.info.run_id)}


@pytest.mark.usefixtures("prefect_harness")
def test_compare_without_recorded_data_asks_for_it(capsys, pmpo_home):
    from tasks.mlflow import prompts

    prompts.register("bare", "Some prompt.", "no record", {})
    assert main(["compare", "bare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (the lines before: MLflow creating the test's store)
    assert err.startswith("pmpo: error: ") and "give data (--data)" in err
    assert main(["compare", "bare", "7"]) == 1
    assert "no version or alias '7'" in capsys.readouterr().err
