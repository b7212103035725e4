"""One throwaway SQLite store for the tasks.mlflow tests (creating an MLflow database takes seconds); each test
has its own experiment."""

from __future__ import annotations

import pytest

from pmpo.loop.result import Candidate, Iteration, SegmentEffect


@pytest.fixture(scope="package", autouse=True)
def mlflow_home(tmp_path_factory):
    """PMPO_HOME on a fresh directory for the whole package, no MLFLOW_TRACKING_URI."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("pmpo-home")
        mp.setenv("PMPO_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture
def exp(request) -> str:
    """An experiment name of this test's own."""
    return request.node.name


def _candidate(i: int, iteration: int = 0, parent: str | None = None) -> Candidate:
    origin = "initial" if parent is None else "rewrite"
    return Candidate(f"c{i}", parent, iteration, origin, f"prompt {i}", 2.0 - i / 10, 0.5, 8)


def _iteration(t: int, incumbent: str, loss: float) -> Iteration:
    effects = (SegmentEffect(0, "Read it.", 0.3), SegmentEffect(1, "Be brief.", -0.1))
    return Iteration(t, incumbent, loss, loss, 2, {"no_tags": 1, "empty": 0}, effects, (3, 1), True)


@pytest.fixture
def candidate():
    """`candidate(i, iteration=0, parent=None)`: candidate c<i> (the initial one when it has no parent)."""
    return _candidate


@pytest.fixture
def iteration():
    """`iteration(t, incumbent, loss)`: iteration t with a two-unit masking table."""
    return _iteration
