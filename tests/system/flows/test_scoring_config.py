"""The multiple-choice objective: preference by default, aliases never rejected, and the choice carried from
config and CLI flags into the scorer, the cache key, the held-out set-up and the run's params."""

import pytest

from flows.config import ConfigError, EvaluateConfig, OptimizeConfig, build
from flows.heldout import setup_of
from flows.record import flatten
from pmpo.data.examples import MultipleChoice
from pmpo.models.loading import ModelSettings
from pmpo.scoring.loss import ScorerSettings, example_rows
from pmpo_cli.main import build_parser
from pmpo_cli.options import config_values
from tasks.identity import model_key
from tasks.models import ModelRef


def test_multiple_choice_is_a_preference_by_default():
    example = MultipleChoice("Sky?", ("blue", "green", "red"), "blue")
    assert ScorerSettings().mc_objective == "preference" and ScorerSettings().beta == 1.0
    assert example_rows(example) == ("Sky?", ["blue", "green", "red"], True)
    assert example_rows(example, "ce") == ("Sky?", ["blue"], False)


def test_aliases_of_the_answer_are_never_rejected():
    example = MultipleChoice("Fruit?", ("apple", " An Apple ", "APPLE", "brick"), "apple", aliases=("an apple",))
    assert example_rows(example) == ("Fruit?", ["apple", "brick"], True)
    # Every option is the answer in other words: nothing to prefer it over, so plain CE on the answer.
    only = MultipleChoice("Fruit?", ("apple", "an apple"), "apple", aliases=("An apple",))
    assert example_rows(only) == ("Fruit?", ["apple"], False)


def test_scoring_block_reaches_the_scorer_and_the_heldout_setup():
    config = OptimizeConfig(scoring={"mc_objective": "ce", "beta": 2.5})
    assert config.scoring == ScorerSettings(mc_objective="ce", beta=2.5)
    setup = setup_of(config)
    assert setup.scoring == config.scoring
    assert EvaluateConfig().scoring == ScorerSettings()  # evaluate defaults to the same loss as optimize
    params = flatten(config.model_dump(mode="json"))
    assert params["scoring.mc_objective"] == "ce" and params["scoring.beta"] == "2.5"


def test_scoring_choice_is_part_of_the_cache_key():
    def key(settings):
        return model_key(ModelRef(ModelSettings(spec="/m"), settings, "tiny@sha256:1", "float32", "cpu"))

    keys = [key(ScorerSettings()), key(ScorerSettings(mc_objective="ce")), key(ScorerSettings(beta=2.0))]
    assert len({str(k) for k in keys}) == 3
    assert keys[0]["scorer"] == ScorerSettings().model_dump()


@pytest.mark.parametrize("command", ["optimize", "evaluate"])
def test_cli_flags_set_the_scoring_block(command):
    args = build_parser().parse_args([command, "--mc-objective", "ce", "--beta", "0.5"])
    assert config_values(args)["scoring"] == {"mc_objective": "ce", "beta": 0.5}
    assert "scoring" not in config_values(build_parser().parse_args([command]))


def test_bad_beta_is_a_one_line_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"scoring\.beta"):
        build(OptimizeConfig, {"scoring": {"beta": 0}})
    with pytest.raises(ConfigError, match=r"scoring\.mc_objective"):
        build(EvaluateConfig, {"scoring": {"mc_objective": "dpo"}})
