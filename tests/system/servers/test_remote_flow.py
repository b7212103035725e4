"""A whole optimisation flow scored through a server (tests/echo_server.py over the tiny model), and the
secrets rule: a recognisable fake API key never reaches MLflow, Prefect's records, results or logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from support.pipeline import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "sk-PMPO-FAKE-KEY-3b9e2f71"


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory, tiny_model_dir, tiny_lm, prefect_harness):
    """One flow run (1 iteration) whose every loss comes from the server, which demands the key."""
    from flows.optimize import optimize_prompt
    from tasks import models
    from testkit.echo_server import echo_app, serving

    home, requests = tmp_path_factory.mktemp("pmpo-home"), []
    with pytest.MonkeyPatch.context() as mp, serving(echo_app(tiny_lm, "tiny", key=KEY, requests=requests)) as url:
        mp.setenv("PMPO_HOME", str(home))
        mp.setenv("PMPO_TEST_API_KEY", KEY)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        remote = {
            "spec": str(tiny_model_dir),
            "backend": "openai",
            "base_url": url,
            "model": "tiny",
            "api_key_env": "PMPO_TEST_API_KEY",
            "check": False,
        }  # random weights cannot pass the check
        config = tiny_config(tiny_model_dir, model=remote, iterations=1)
        ref = models.model_ref(config.model, config.scoring)
        yield home, ref, optimize_prompt(config), requests


def test_remote_flow_scores_through_the_server(remote_run):
    from pmpo.remote import RemoteScorer
    from tasks import models
    from tasks.identity import model_key

    _, ref, summary, _ = remote_run
    assert ref.identity.startswith("openai:http://127.0.0.1:") and ref.identity.endswith("#tiny@unpinned")
    assert "@sha256:" in model_key(ref)["tokenizer"]  # the tokenizer that rendered the texts is in the key
    sc = models.scorer(ref)
    assert isinstance(sc, RemoteScorer)
    assert sc.usage.snapshot().tokens_scored > 0  # the losses came from the server
    assert summary.heldout is not None and summary.heldout.final_accuracy is not None  # answers from the server
    assert sc.usage.snapshot().tokens_generated > 0  # ... which generated them
    assert summary.heldout.final_loss > 0  # the held-out loss went through the server


def test_a_served_model_rewrites_for_itself_through_its_server_and_never_loads_here(remote_run):
    from tasks import models

    _, ref, summary, requests = remote_run
    chats = [r for r in requests if "messages" in r]
    assert chats and all(r["model"] == "tiny" for r in chats)  # rewriter: same -> the server's chat endpoint
    assert summary.rewriter_identity == ref.identity  # same server, same model: one identity
    assert not models.is_loaded(ref)  # no local copy of the weights: scoring, answers and rewrites were served


def test_the_api_key_is_in_no_record(remote_run, prefect_harness, caplog, capsys):
    home, _, _, _ = remote_run
    needle = KEY.encode()
    files = [p for p in Path(home).rglob("*") if p.is_file()]
    prefect_db = _prefect_database_files()
    assert any(p.name.endswith(".db") for p in files) and prefect_db  # MLflow's and Prefect's stores are searched
    files += prefect_db
    leaks = [str(p) for p in files if needle in p.read_bytes()]
    assert leaks == []
    logged = caplog.text + "".join(capsys.readouterr())
    assert KEY not in logged
    assert KEY not in _prefect_parameters_text()


def _prefect_database_files() -> list[Path]:
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    db = Path(url.split("///", 1)[-1]) if url.startswith("sqlite") else None
    return [p for p in db.parent.glob(db.name + "*")] if db and db.exists() else []


def _prefect_parameters_text() -> str:
    """Every flow and task run's parameters as Prefect's API holds them."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> str:
        async with get_client() as client:
            flows = await client.read_flow_runs()
            tasks = await client.read_task_runs()
        return repr([f.parameters for f in flows]) + repr([t.task_inputs for t in tasks])

    logging.getLogger("prefect").setLevel(logging.WARNING)
    return asyncio.run(read())
