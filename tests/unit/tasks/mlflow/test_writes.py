"""What a run records: the candidates table rewritten whole, no duplicate iteration records after a resume,
finite metrics only."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from pmpo.loop.result import Iteration
from tasks.mlflow import queries, runs, store, writes


def test_candidates_table_is_replaced_not_appended(exp, candidate):
    run = runs.start_run(exp, "key", "a", params={}, tags={})
    writes.log_candidates(run, [candidate(0)], selected={"c0"})
    gated = replace(candidate(1, 1, "c0"), gap_se=0.1, tempered_gap=-0.2, tempered_gap_se=0.05, accuracy_norm=0.5)
    writes.log_candidates(run, [candidate(0), gated], selected={"c0", "c1"})

    rows = queries.run_candidates(run.run_id)
    assert [r["id"] for r in rows] == ["c0", "c1"]
    assert rows[1]["parent"] == "c0" and rows[1]["selected"] is True
    assert rows[1]["loss_sum"] == pytest.approx(1.9 * 8)
    # what the gate weighed is in the table
    assert (rows[1]["gap_se"], rows[1]["tempered_gap"], rows[1]["tempered_gap_se"]) == (0.1, -0.2, 0.05)
    assert rows[1]["accuracy_norm"] == 0.5 and rows[0]["tempered_gap"] is None
    logged = runs.run_tags(run.run_id)["mlflow.loggedArtifacts"]
    assert logged.count("candidates.json") == 1  # shown as a table in the UI, registered once


def test_recorder_skips_iterations_a_resumed_run_already_has(exp, candidate, iteration):
    from flows.record import Recorder

    run = runs.start_run(exp, "key", "a", params={}, tags={})
    rec = Recorder(run)
    rec.candidate(candidate(0))
    rec.iteration(iteration(1, "c0", 2.0))
    resumed = runs.start_run(exp, "key", "a", params={}, tags={})
    replay = Recorder(resumed)
    replay.candidate(candidate(0))
    replay.iteration(iteration(1, "c0", 2.0))  # replayed from the cache after a restart
    replay.candidate(candidate(1, 2, "c0"))
    replay.iteration(iteration(2, "c1", 1.9))

    assert [s for s, _ in queries.metric_history(run.run_id, "incumbent_loss")] == [0, 1, 2]
    assert [s for s, _ in queries.metric_history(run.run_id, "rejected/no_tags")] == [1, 2]
    assert [r["id"] for r in queries.run_candidates(run.run_id)] == ["c0", "c1"]


def test_iteration_metrics_skip_infinite_values(exp):
    run = runs.start_run(exp, "key", "a", params={}, tags={})
    it = Iteration(1, "c0", 2.0, math.inf, 0, {}, (), (0,), False)
    writes.log_iteration(run, it, n_total=1)
    metrics = store.client().get_run(run.run_id).data.metrics
    assert "best_candidate_loss" not in metrics and metrics["n_candidates"] == 0
