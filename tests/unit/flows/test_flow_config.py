"""The flows' parameters nest pmpo's settings as they are: the same strict base (in a run config and in a nightly
prompts file), and the same default search as the library."""

import inspect

import pytest
from pydantic import ValidationError

import pmpo
from flows.config import ConfigError, EvaluateConfig, OptimizeConfig, build
from flows.managed import ManagedPrompt, NightlyConfig, PromotionRule, plan
from pmpo.loop.settings import OptimizerConfig
from pmpo.models.settings import ModelSettings
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.settings import ScorerSettings
from pmpo.settings import Strict


@pytest.mark.parametrize(
    "values, says",
    [
        ({"iterations": True}, "iterations: expected a number, not the boolean true"),
        ({"rewrite": {"k": True}}, "rewrite.k: expected a number, not the boolean true"),
        ({"racing": {"margin": False}}, "racing.margin: expected a number, not the boolean false"),
        ({"model": {"timeout_s": True}}, "model.timeout_s: expected a number, not the boolean true"),
        ({"rewriter": {"max_retries": True}}, "rewriter.max_retries: expected a number, not the boolean true"),
        ({"scoring": {"betta": 2}}, "scoring.betta: Extra inputs are not permitted"),
        ({"iteration": 3}, "iteration: Extra inputs are not permitted"),
    ],
)
def test_a_run_config_refuses_unknown_keys_and_booleans_for_numbers(values, says):
    with pytest.raises(ConfigError, match=says):
        build(OptimizeConfig, values)


def test_a_nightly_prompts_file_refuses_unknown_keys_and_booleans_for_numbers(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("promotion: {margin: true}\nprompts: [{name: a}]\n")
    with pytest.raises(ConfigError, match="promotion.margin: expected a number, not the boolean true"):
        plan(NightlyConfig(prompts_file=str(path)))
    path.write_text("promotion: {margins: 0.1}\nprompts: [{name: a}]\n")
    with pytest.raises(ConfigError, match="promotion.margins: Extra inputs are not permitted"):
        plan(NightlyConfig(prompts_file=str(path)))
    path.write_text("prompts: [{name: a, optimize: {iterations: true}}]\n")
    with pytest.raises(
        ConfigError, match=r"prompts\[0\] \(a\): optimize.iterations: expected a number, not the boolean"
    ):
        plan(NightlyConfig(prompts_file=str(path)))  # every entry, before the refresh starts anything
    with pytest.raises(ValidationError):
        PromotionRule(max_accuracy_drop=True)
    assert issubclass(ManagedPrompt, Strict) and issubclass(NightlyConfig, Strict)


def test_the_library_the_cli_and_the_flows_run_the_same_default_search():
    library = inspect.signature(pmpo.optimize).parameters["config"].default
    flow = OptimizeConfig()
    assert library.iterations == OptimizerConfig().iterations == flow.iterations == 2
    assert flow.rewrite == library.rewrite and flow.racing == library.racing and flow.seed == library.seed
    loop_fields = set(OptimizerConfig.model_fields)
    assert OptimizerConfig.model_validate(flow.model_dump(include=loop_fields)) == library


def test_evaluate_and_optimize_share_the_model_and_scoring_blocks():
    assert (
        EvaluateConfig.model_fields["model"].annotation
        is OptimizeConfig.model_fields["model"].annotation
        is ModelSettings
    )
    assert EvaluateConfig.model_fields["scoring"].annotation is ScorerSettings


def test_the_old_config_keys_of_the_rewrite_block_still_work():
    assert RewriteSettings(k=2, n=5) == RewriteSettings(hard_k=2, n_variants=5)
    assert OptimizeConfig.model_validate({"rewrite": {"k": 1, "n": 2}}).rewrite.n_variants == 2
    dumped = OptimizeConfig(rewrite={"k": 1}).model_dump()
    assert OptimizeConfig.model_validate(dumped).rewrite.hard_k == 1  # a recorded config.json reads back
