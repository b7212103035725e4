"""The optimisation flow under a throwaway Prefect API, on the tiny model: its record in MLflow, its equality
with the library loop, and an identical rerun that computes nothing."""

from __future__ import annotations

import pytest

from pmpo.data import load_dataset, split_dataset
from pmpo.loop.optimizer import PMPO
from support.pipeline import PROMPT, forget_process_scores, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir, prefect_harness):
    """One completed flow run in a fresh data directory, shared by the module's tests (each reads it, and
    the ones that run the flow again only add runs to the same store)."""
    from flows.optimize import optimize_prompt

    forget_process_scores()  # the cost test counts the work this run does
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMPO_HOME", str(tmp_path_factory.mktemp("pmpo-home")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = tiny_config(tiny_model_dir)
        yield config, optimize_prompt(config)


def _key(c) -> tuple:
    return (c.id, c.parent_id, c.iteration, c.origin, c.prompt)


def test_flow_gives_the_library_loops_candidates(first_run, tiny_lm):
    config, summary = first_run
    split = split_dataset(load_dataset("builtin:sentiment", limit=40), seed=config.seed)
    direct = PMPO(tiny_lm, config).optimize(PROMPT, split.train)

    assert [_key(c) for c in summary.candidates] == [_key(c) for c in direct.candidates]
    assert [c.loss for c in summary.candidates] == pytest.approx([c.loss for c in direct.candidates], rel=1e-6)
    assert summary.best_prompt == direct.best_prompt
    assert summary.n_candidates == len(direct.candidates) > 1  # the rewrite step did produce candidates


def test_mlflow_table_holds_exactly_the_flow_candidates(first_run):
    from tasks.mlflow import queries

    _, summary = first_run
    rows = queries.run_candidates(summary.run_id)

    assert [r["id"] for r in rows] == [c.id for c in summary.candidates]
    for row, c in zip(rows, summary.candidates):
        assert (row["parent"], row["iteration"], row["origin"], row["prompt"]) == (
            c.parent_id,
            c.iteration,
            c.origin,
            c.prompt,
        )
        assert row["loss_mean"] == pytest.approx(c.loss)
        assert row["loss_sum"] == pytest.approx(c.loss * c.n_examples)
        assert row["selected"] == c.selected
    assert rows[0]["origin"] == "initial" and rows[0]["selected"]


def test_mlflow_run_record(first_run):
    from tasks.mlflow import prompts, queries, store

    config, summary = first_run
    run = store.client().get_run(summary.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics

    assert run.info.status == "FINISHED"
    assert tags["pmpo.model_identity"] == summary.model_identity
    assert tags["pmpo.dataset_fingerprint"] == summary.dataset_fingerprint
    assert tags["pmpo.code_version"] and tags["prefect.flow_run_id"]
    assert params["iterations"] == str(config.iterations) and params["model.dtype"] == "float32"
    steps = [step for step, _ in queries.metric_history(summary.run_id, "incumbent_loss")]
    assert steps == list(range(config.iterations + 1))  # iteration 0 (initial) .. T, each once
    assert metrics["best_loss"] == pytest.approx(summary.best_loss)
    assert metrics["heldout/loss_initial"] == pytest.approx(summary.heldout.initial_loss)
    assert "heldout/accuracy_final" in metrics
    h = summary.heldout
    assert metrics["heldout/delta_loss"] == pytest.approx(h.final_loss - h.initial_loss)
    assert (metrics["heldout/delta_loss_low"], metrics["heldout/delta_loss_high"]) == pytest.approx(
        (h.delta_loss.low, h.delta_loss.high)
    )
    assert metrics["heldout/delta_accuracy"] == pytest.approx(h.final_accuracy - h.initial_accuracy)
    assert (
        metrics["heldout/delta_accuracy_low"]
        <= metrics["heldout/delta_accuracy"]
        <= metrics["heldout/delta_accuracy_high"]
    )
    artifacts = {a.path for a in store.client().list_artifacts(summary.run_id)}
    assert {"loss_by_iteration.png", "candidates.json", "config.json"} <= artifacts
    assert prompts.load_registered_prompt(f"prompts:/{summary.prompt_name}@latest") == summary.best_prompt


def test_identical_rerun_recomputes_nothing_and_never_loads_the_model(first_run, monkeypatch):
    from flows.optimize import optimize_prompt
    from tasks import models

    config, first = first_run
    # The initial prompt, then one batch per iteration that had candidates to score (the tiny random model's
    # rewrites are mostly cut off by their token budget and rejected, so an iteration may have none).
    scored = {c.iteration for c in first.candidates if c.iteration > 0}
    assert first.work.computed["loss"] == 1 + len(scored) >= 2
    monkeypatch.setattr(models, "_MODELS", {})  # as in a fresh process
    monkeypatch.setattr(models, "_SCORERS", {})

    second = optimize_prompt(config)

    assert second.work.computed.get("loss", 0) == 0
    assert second.work.computed.get("rewrite", 0) == second.work.computed.get("mask", 0) == 0
    assert second.work.computed.get("evaluate", 0) == 0
    assert second.work.cached["loss"] == first.work.computed["loss"]
    assert models._MODELS == {}  # a fully cached run never needed the weights
    assert [c.id for c in second.candidates] == [c.id for c in first.candidates]
    assert second.run_id != first.run_id  # the first run finished: a new run, not a resumed one


def test_more_iterations_reuse_the_ones_already_computed(first_run):
    from flows.optimize import optimize_prompt

    config, first = first_run
    longer = optimize_prompt(config.model_copy(update={"iterations": config.iterations + 1}))

    new_iteration = config.iterations + 1
    # Only the new iteration's batch (none when all its rewrites were rejected and nothing was removable).
    assert longer.work.computed.get("loss", 0) == int(any(c.iteration == new_iteration for c in longer.candidates))
    assert longer.work.computed["rewrite"] == 1
    assert [c.id for c in longer.candidates][: first.n_candidates] == [c.id for c in first.candidates]
    assert longer.run_id != first.run_id  # another config: another run


def test_cache_keys_hold_content_not_objects_or_labels():
    from dataclasses import replace

    from pmpo.data import Dataset, Supervised
    from pmpo.models.loading import ModelSettings
    from pmpo.scoring.loss import ScorerSettings
    from tasks.caching import ContentInputs
    from tasks.identity import content
    from tasks.models import ModelRef

    ref = ModelRef(ModelSettings(spec="/models/a"), ScorerSettings(), "tiny@sha256:1", "float32", "cpu")
    data = Dataset("d", (Supervised("x", "y"),))
    policy = ContentInputs(exclude=["iteration"])

    def key(**inputs) -> str:
        return policy.compute_key(None, inputs, {})

    base = key(model=ref, data=data, prompts=["p"], iteration=1)
    # Where the model lives, what the dataset is called and the run-name label do not matter...
    same = key(
        model=replace(ref, settings=ModelSettings(spec="/elsewhere")),
        data=Dataset("e", data.examples),
        prompts=["p"],
        iteration=2,
    )
    assert same == base
    # ...the model's identity and numerics, the examples and the prompt text do.
    assert key(model=replace(ref, identity="tiny@sha256:2"), data=data, prompts=["p"]) != base
    assert key(model=replace(ref, dtype="bfloat16"), data=data, prompts=["p"]) != base
    assert key(model=ref, data=Dataset("d", (Supervised("x", "z"),)), prompts=["p"]) != base
    assert key(model=ref, data=data, prompts=["p "]) != base
    with pytest.raises(TypeError, match="no content key"):
        content(object())


def test_run_cost_adds_up_in_the_summary_and_mlflow(first_run):
    from tasks.mlflow import queries, store

    config, summary = first_run
    cost = summary.cost
    assert len(cost.iterations) == config.iterations
    spans = [cost.initial, *cost.iterations, cost.heldout]
    for field in ("forward_passes", "tokens_scored", "tokens_generated", "tokens_prefilled", "seconds"):
        assert getattr(cost.total, field) == pytest.approx(sum(getattr(s, field) for s in spans))
    assert cost.initial.steps["loss"].tokens_scored > 0 and cost.initial.tokens_generated == 0
    assert all(it.steps["rewrite"].tokens_generated > 0 for it in cost.iterations)
    assert all(it.steps["rewrite"].tokens_prefilled > it.steps["rewrite"].tokens_generated for it in cost.iterations)
    assert cost.heldout.steps["evaluate"].tokens_scored > 0 and cost.heldout.seconds > 0
    history = queries.metric_history(summary.run_id, "cost/tokens_scored")
    assert history == [(i, float(it.tokens_scored)) for i, it in enumerate(cost.iterations, start=1)]
    metrics = store.client().get_run(summary.run_id).data.metrics
    assert metrics["cost_total/tokens_scored"] == cost.total.tokens_scored
    assert metrics["time_total/evaluate_s"] == pytest.approx(cost.heldout.seconds)


def test_fully_cached_rerun_reports_no_model_work(first_run, monkeypatch):
    from flows.optimize import optimize_prompt
    from tasks import models

    config, _ = first_run
    monkeypatch.setattr(models, "_MODELS", {})  # as in a fresh process
    monkeypatch.setattr(models, "_SCORERS", {})

    again = optimize_prompt(config)

    total = again.cost.total
    assert (total.forward_passes, total.tokens_scored, total.tokens_generated, total.tokens_prefilled) == (0, 0, 0, 0)
    assert len(again.cost.iterations) == config.iterations  # the iterations are there, each at zero cost
