"""The MLflow adapter on a throwaway SQLite store: run resumption by key, whole-table rewrites, no duplicate
iteration records, the Prompt Registry round trip, and the read side used by `pmpo runs` / `pmpo show`."""

from __future__ import annotations

import math

import pytest

from pmpo.errors import PmpoError
from pmpo.loop.result import Candidate, Iteration, SegmentEffect


def _candidate(i: int, iteration: int = 0, parent: str | None = None) -> Candidate:
    origin = "initial" if parent is None else "rewrite"
    return Candidate(f"c{i}", parent, iteration, origin, f"prompt {i}", 2.0 - i / 10, 0.5, 8)


def _iteration(t: int, incumbent: str, loss: float) -> Iteration:
    effects = (SegmentEffect(0, "Read it.", 0.3), SegmentEffect(1, "Be brief.", -0.1))
    return Iteration(t, incumbent, loss, loss, 2, {"no_tags": 1, "empty": 0}, effects, (3, 1), True)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One store for the module (creating an MLflow database takes seconds); each test has its own experiment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMPO_HOME", str(tmp_path_factory.mktemp("pmpo-home")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from tasks import tracking

        yield tracking


@pytest.fixture
def exp(request) -> str:
    """An experiment name of this test's own."""
    return request.node.name


def test_unfinished_run_with_the_same_key_is_continued(tracking, exp):
    first = tracking.start_run(exp, "key-1", "a", params={"seed": 0}, tags={"t": "1"})
    again = tracking.start_run(exp, "key-1", "a", params={"seed": 0}, tags={"t": "1"})
    other = tracking.start_run(exp, "key-2", "b", params={"seed": 1}, tags={})
    assert again.run_id == first.run_id and again.resumed and not first.resumed
    assert other.run_id != first.run_id

    tracking.finish(first)
    after_finish = tracking.start_run(exp, "key-1", "a", params={"seed": 0}, tags={})
    assert after_finish.run_id != first.run_id and not after_finish.resumed

    tracking.finish(after_finish, "FAILED")  # a failed run is continued too
    assert tracking.start_run(exp, "key-1", "a", params={"seed": 0}, tags={}).run_id == after_finish.run_id


def test_resumed_run_knows_the_last_recorded_iteration(tracking, exp):
    run = tracking.start_run(exp, "key", "a", params={}, tags={})
    tracking.log_metrics(run, {tracking.STEP_METRIC: 2.0}, step=0)
    tracking.log_iteration(run, _iteration(1, "c1", 1.9), n_total=3)
    assert tracking.start_run(exp, "key", "a", params={}, tags={}).logged_through == 1


def test_candidates_table_is_replaced_not_appended(tracking, exp):
    run = tracking.start_run(exp, "key", "a", params={}, tags={})
    tracking.log_candidates(run, [_candidate(0)], selected={"c0"})
    tracking.log_candidates(run, [_candidate(0), _candidate(1, 1, "c0")], selected={"c0", "c1"})

    rows = tracking.run_candidates(run.run_id)
    assert [r["id"] for r in rows] == ["c0", "c1"]
    assert rows[1]["parent"] == "c0" and rows[1]["selected"] is True
    assert rows[1]["loss_sum"] == pytest.approx(1.9 * 8)
    logged = tracking.run_tags(run.run_id)["mlflow.loggedArtifacts"]
    assert logged.count("candidates.json") == 1  # shown as a table in the UI, registered once


def test_recorder_skips_iterations_a_resumed_run_already_has(tracking, exp):
    from flows.record import Recorder

    run = tracking.start_run(exp, "key", "a", params={}, tags={})
    rec = Recorder(run)
    rec.candidate(_candidate(0))
    rec.iteration(_iteration(1, "c0", 2.0))
    resumed = tracking.start_run(exp, "key", "a", params={}, tags={})
    replay = Recorder(resumed)
    replay.candidate(_candidate(0))
    replay.iteration(_iteration(1, "c0", 2.0))  # replayed from the cache after a restart
    replay.candidate(_candidate(1, 2, "c0"))
    replay.iteration(_iteration(2, "c1", 1.9))

    assert [s for s, _ in tracking.metric_history(run.run_id, "incumbent_loss")] == [0, 1, 2]
    assert [s for s, _ in tracking.metric_history(run.run_id, "rejected/no_tags")] == [1, 2]
    assert [r["id"] for r in tracking.run_candidates(run.run_id)] == ["c0", "c1"]


def test_iteration_metrics_skip_infinite_values(tracking, exp):
    run = tracking.start_run(exp, "key", "a", params={}, tags={})
    it = Iteration(1, "c0", 2.0, math.inf, 0, {}, (), (0,), False)
    tracking.log_iteration(run, it, n_total=1)
    metrics = tracking.client().get_run(run.run_id).data.metrics
    assert "best_candidate_loss" not in metrics and metrics["n_candidates"] == 0


def test_prompt_registry_round_trip(tracking, exp):
    run = tracking.start_run(exp, "key", "a", params={}, tags={})
    name, v1 = tracking.register_prompt("builtin:sentiment/x", "First prompt.", 1.5, run)
    _, v2 = tracking.register_prompt("builtin:sentiment/x", "Second prompt.", 1.2, run)

    assert name == "builtin-sentiment-x" and v2 == v1 + 1
    assert tracking.load_registered_prompt(f"prompts:/{name}@latest") == "Second prompt."
    assert tracking.load_registered_prompt(f"prompts:/{name}/{v1}") == "First prompt."
    with pytest.raises(PmpoError, match="not found"):
        tracking.load_registered_prompt("prompts:/no-such-prompt@latest")


def test_runs_listing_and_unknown_run(tracking, exp):
    run = tracking.start_run(exp, "key", "my run", params={}, tags={})
    tracking.log_metrics(run, {"initial_loss": 2.0, "best_loss": 1.5}, step=1)
    listed = tracking.list_runs(exp)
    assert [(r["run_id"], r["experiment"], r["best_loss"], r["name"]) for r in listed] == [(run.run_id, exp, 1.5, "my run")]
    assert run.run_id in [r["run_id"] for r in tracking.list_runs()]  # all experiments
    with pytest.raises(PmpoError, match="no run"):
        tracking.run_candidates("0123456789abcdef")
    with pytest.raises(PmpoError, match="no experiment"):
        tracking.list_runs("nope")
