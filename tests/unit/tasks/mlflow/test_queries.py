"""The read side used by `pmpo runs` / `pmpo show`: runs listed by experiment or all, clear errors for a run or
an experiment that does not exist."""

from __future__ import annotations

import pytest

from pmpo.errors import PmpoError
from tasks.mlflow import queries, runs, writes


def test_runs_listing_and_unknown_run(exp):
    run = runs.start_run(exp, "key", "my run", params={}, tags={})
    writes.log_metrics(run, {"initial_loss": 2.0, "best_loss": 1.5}, step=1)
    listed = queries.list_runs(exp)
    assert [(r["run_id"], r["experiment"], r["best_loss"], r["name"]) for r in listed] == [
        (run.run_id, exp, 1.5, "my run")
    ]
    assert run.run_id in [r["run_id"] for r in queries.list_runs()]  # all experiments
    with pytest.raises(PmpoError, match="no run"):
        queries.run_candidates("0123456789abcdef")
    with pytest.raises(PmpoError, match="no experiment"):
        queries.list_runs("nope")
