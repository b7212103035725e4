"""A budget stops the flow at a step boundary and says so; the same config with a larger budget goes on from the
task cache: no step the first run finished is computed again. On the tiny model."""

from __future__ import annotations

import pytest

from support.pipeline import PROMPT, forget_process_scores, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_budget_stop_is_recorded_and_a_larger_budget_resumes_from_the_cache(pmpo_home, tiny_model_dir):
    from flows.dry_run import optimize_plan
    from flows.optimize import optimize_prompt
    from tasks.mlflow import store

    forget_process_scores()  # the budget counts this process's work: no pair may come from an earlier test's memo
    config = tiny_config(tiny_model_dir)
    initial = optimize_plan(config, calibrated=False).steps[0].work.tokens_scored
    # Past the initial scoring, spent inside iteration 1 by its masking: stops before the rewrite step.
    cut = optimize_prompt(tiny_config(tiny_model_dir, budget={"max_tokens": initial + 1}))

    assert cut.stop_reason == "budget" and cut.n_iterations == 0
    assert cut.best_prompt == PROMPT == cut.initial_prompt
    assert (cut.work.computed["loss"], cut.work.computed["mask"], cut.work.computed.get("rewrite", 0)) == (1, 1, 0)
    assert store.client().get_run(cut.run_id).data.tags["pmpo.stop_reason"] == "budget"

    forget_process_scores()
    full = optimize_prompt(config)  # no budget: the same cache keys, so iteration 0 and 1's masking are cached
    assert full.stop_reason == "iterations" and full.n_iterations == config.iterations
    assert full.work.cached.get("mask", 0) >= 1 and full.work.cached.get("loss", 0) >= 1
    assert 0 not in {i for i, n in full.work.loss_computed_by_iteration.items() if n}  # initial loss not redone
    assert full.work.computed.get("mask", 0) == full.n_iterations - 1  # iteration 1's masking came from the cache
