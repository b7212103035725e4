"""Shared fixtures: a tiny random model (fast, no signal) and the real bundled SmolLM2 (slow, real signal)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from testkit.tiny import build_tiny_model

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep the datasets library's Arrow cache of test fixtures out of the user's cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="pmpo-test-datasets-"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A directory holding the tiny random model (usable as a model spec)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The tiny random model, loaded in fp32."""
    from pmpo.models.loading import ModelSettings, load_model

    return load_model(ModelSettings(spec=str(tiny_model_dir), dtype="float32"))


@pytest.fixture(scope="session")
def real_lm():
    """The bundled SmolLM2-135M-Instruct in fp32 (tests of the method itself)."""
    from pmpo.models.loading import ModelSettings, load_model

    return load_model(ModelSettings(dtype="float32"))


@pytest.fixture(scope="session")
def prefect_harness():
    """One throwaway Prefect API for the session (its start is the slow part; flows then run in-process)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def pmpo_home(tmp_path, monkeypatch) -> Path:
    """A fresh data directory (MLflow store, task results) for one test."""
    home = tmp_path / "pmpo-home"
    monkeypatch.setenv("PMPO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


SYSTEM = Path(__file__).parent / "system"


# Fixtures that start a server or a whole flow: a test that uses one is not a fast test, wherever it lives.
SERVER_FIXTURES = {"chat_server", "prefect_harness"}


def pytest_collection_modifyitems(items):
    """Tiers by place and marker: everything under tests/system, and every real-model or server test, is slow."""
    for item in items:
        if SYSTEM in Path(item.fspath).parents:
            item.add_marker(pytest.mark.system)
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
        if (
            item.get_closest_marker("system")
            or item.get_closest_marker("real_model")
            or item.get_closest_marker("server")
        ):
            item.add_marker(pytest.mark.slow)
