"""The real `mlflow.genai.optimize_prompts` with PMPO as its optimizer, on the bundled model and a throwaway
SQLite store: the optimised prompt comes back registered as a new version, keeps its variables, and MLflow's run
holds pmpo's record (candidates table, losses, cost)."""

import json
from pathlib import Path

import mlflow
import pytest

from integrations.mlflow import PmpoOptimizer
from pmpo import OptimizerConfig, RewriteSettings, load_dataset
from pmpo.models.settings import ModelSettings
from pmpo.text.template import variables

pytestmark = pytest.mark.real_model


@pytest.fixture
def store(pmpo_home, tmp_path, monkeypatch):
    """A throwaway tracking store that MLflow's fluent API and pmpo's writers share."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _rows(n: int = 8) -> list[dict]:
    data = load_dataset("builtin:sentiment")
    return [
        {"inputs": {"review": ex.input}, "expectations": {"expected_response": ex.target}} for ex in data.examples[:n]
    ]


def test_optimize_prompts_registers_pmpos_best_prompt_and_records_the_run(store):
    source = mlflow.genai.register_prompt(name="sentiment", template="Read the review.\n\nReview: {{review}}")
    optimizer = PmpoOptimizer(
        ModelSettings(dtype="float32"),
        config=OptimizerConfig(iterations=1, rewrite=RewriteSettings(hard_k=1, n_variants=2)),
        description="Say whether a film review is positive or negative.",
    )
    result = mlflow.genai.optimize_prompts(
        predict_fn=lambda review: "positive",  # pmpo selects by loss: predict_fn is called once, by MLflow's check
        train_data=_rows(),
        prompt_uris=[source.uri],
        optimizer=optimizer,
    )

    [version] = result.optimized_prompts
    assert result.optimizer_name == "PmpoOptimizer"
    assert version.name == "sentiment" and int(version.version) == 2  # a new version beside the source
    assert variables(version.template) == ("review",)
    run = mlflow.last_active_run()
    client = mlflow.MlflowClient()
    candidates = json.loads(Path(client.download_artifacts(run.info.run_id, "candidates.json")).read_text())
    table = dict(zip(candidates["columns"], zip(*candidates["data"])))
    assert table["origin"][0] == "initial" and len(table["prompt"]) >= 1
    assert version.template in table["prompt"]  # what MLflow registered is pmpo's best candidate
    best = min(loss for loss, dropped in zip(table["loss_mean"], table["dropped"]) if not dropped)
    metrics = run.data.metrics
    assert metrics["best_loss"] == pytest.approx(best) and metrics["best_loss"] <= metrics["initial_loss"]
    assert metrics["cost_total/tokens_scored"] > 0 and [
        m.step for m in client.get_metric_history(run.info.run_id, "incumbent_loss")
    ] == [0, 1]
    assert run.data.params["optimizer"] == "PmpoOptimizer" and run.data.params["pmpo.iterations"] == "1"
    assert run.data.tags["pmpo.placement"] == "user"  # a template is the user message
    assert run.data.tags["pmpo.task_description"].startswith("Say whether")


def test_a_chat_prompt_and_a_text_prompt_are_each_optimised_in_a_child_run(store):
    text = mlflow.genai.register_prompt(name="text", template="Review: {{review}}\nSentiment:")
    chat = mlflow.genai.register_prompt(
        name="chat",
        template=[
            {"role": "system", "content": "Answer positive or negative."},
            {"role": "user", "content": "{{review}}"},
        ],
    )
    result = mlflow.genai.optimize_prompts(
        predict_fn=lambda review: "positive",
        train_data=_rows(4),
        prompt_uris=[text.uri, chat.uri],
        optimizer=PmpoOptimizer(ModelSettings(dtype="float32"), config=OptimizerConfig(iterations=0)),
    )

    by_name = {p.name: p for p in result.optimized_prompts}
    assert by_name["chat"].template == chat.template  # no iteration: the initial prompt, as a list of messages
    assert int(by_name["chat"].version) == 2 and int(by_name["text"].version) == 2
    parent = mlflow.last_active_run()
    children = mlflow.MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    placement = {r.data.tags["pmpo.prompt_name"]: r.data.tags["pmpo.placement"] for r in children}
    assert placement == {"text": "user", "chat": "chat"}
    assert all(r.data.metrics["initial_loss"] > 0 for r in children)
