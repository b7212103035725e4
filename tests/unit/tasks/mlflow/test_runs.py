"""Runs found by their key: an unfinished run is continued, a finished one is not, a resumed run knows the last
iteration it recorded."""

from __future__ import annotations

from tasks.mlflow import runs, writes


def test_unfinished_run_with_the_same_key_is_continued(exp):
    first = runs.start_run(exp, "key-1", "a", params={"seed": 0}, tags={"t": "1"})
    again = runs.start_run(exp, "key-1", "a", params={"seed": 0}, tags={"t": "1"})
    other = runs.start_run(exp, "key-2", "b", params={"seed": 1}, tags={})
    assert again.run_id == first.run_id and again.resumed and not first.resumed
    assert other.run_id != first.run_id

    runs.finish(first)
    after_finish = runs.start_run(exp, "key-1", "a", params={"seed": 0}, tags={})
    assert after_finish.run_id != first.run_id and not after_finish.resumed

    runs.finish(after_finish, "FAILED")  # a failed run is continued too
    assert runs.start_run(exp, "key-1", "a", params={"seed": 0}, tags={}).run_id == after_finish.run_id


def test_resumed_run_knows_the_last_recorded_iteration(exp, iteration):
    run = runs.start_run(exp, "key", "a", params={}, tags={})
    writes.log_metrics(run, {runs.STEP_METRIC: 2.0}, step=0)
    writes.log_iteration(run, iteration(1, "c1", 1.9), n_total=3)
    assert runs.start_run(exp, "key", "a", params={}, tags={}).logged_through == 1


def test_the_last_resort_marks_the_runs_still_open_failed_and_leaves_finished_ones(exp):
    from tasks.mlflow.store import client

    done = runs.start_run(exp, "key-done", "a", params={}, tags={})
    runs.finish(done)
    open_ = runs.start_run(exp, "key-open", "b", params={}, tags={})
    runs.fail_open_runs()  # what the interrupt watchdog does when the flow could not unwind in time
    assert client().get_run(open_.run_id).info.status == "FAILED"
    assert client().get_run(done.run_id).info.status == "FINISHED"
    resumed = runs.start_run(exp, "key-open", "b", params={}, tags={})  # its lock was given up: resumable
    assert resumed.run_id == open_.run_id and resumed.resumed
