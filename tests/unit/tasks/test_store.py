"""The result store's failures name it: a store that cannot be created or written is one error saying which store,
what path and why, not an OSError from deep inside Prefect, nor a write Prefect only logs."""

from __future__ import annotations

import errno

import pytest

from tasks.store import ResultStoreError, check_writable, result_store, write_failure


def test_a_store_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("PMPO_RESULTS_DIR", str(blocker / "results"))
    with pytest.raises(
        ResultStoreError, match=rf"result store {blocker / 'results'} \(PMPO_RESULTS_DIR\): cannot create"
    ):
        result_store()


def test_a_failed_write_in_the_store_is_named_and_others_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPO_RESULTS_DIR", str(tmp_path / "results"))
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "values" / "abc"))
    named = write_failure(full)
    assert isinstance(named, ResultStoreError)
    assert f"result store {tmp_path / 'results'}" in str(named) and "No space left on device" in str(named)
    assert str(tmp_path / "results" / "values" / "abc") in str(named)
    elsewhere = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results-other" / "x"))
    assert write_failure(elsewhere) is None  # a path beside the store, not in it
    assert write_failure(OSError("no file")) is None


def test_the_write_probe_names_a_store_it_cannot_write_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPO_RESULTS_DIR", str(tmp_path / "results"))
    result_store()
    check_writable()  # a writable store: no error, and no probe file left
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["locks", "records", "values"]

    blocker = tmp_path / "gone"  # the store's directory replaced by a file (an unmounted disk, a removed folder)
    blocker.write_text("")
    monkeypatch.setenv("PMPO_RESULTS_DIR", str(blocker))
    with pytest.raises(ResultStoreError, match=rf"result store {blocker} \(PMPO_RESULTS_DIR\): cannot write"):
        check_writable()
