"""Each setting is declared once: one strict base for every block, shared field rules, and a description for every
field (the docs' reference and the CLI help are made from them)."""

import pytest
from pydantic import BaseModel, ValidationError

from pmpo.loop.settings import OptimizerConfig
from pmpo.models.settings import ModelSettings
from pmpo.rewriting.settings import RewriterSettings, RewriteSettings
from pmpo.scoring.settings import RacingSettings, ScorerSettings
from pmpo.settings import Strict, describe

BLOCKS = [OptimizerConfig, ModelSettings, RewriterSettings, RewriteSettings, RacingSettings, ScorerSettings]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_every_block_is_strict_and_every_field_says_what_it_is(block):
    assert issubclass(block, Strict)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        block(no_such_field=1)
    undescribed = [
        name
        for name, f in block.model_fields.items()
        if not f.description and not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))
    ]
    assert undescribed == []


def test_api_key_env_is_one_rule_for_both_servers():
    for block in (ModelSettings, RewriterSettings):
        assert block(api_key_env="OPENAI_API_KEY").api_key_env == "OPENAI_API_KEY"
        with pytest.raises(ValidationError, match="takes the NAME of an environment variable"):
            block(api_key_env="sk-abc-123")
        with pytest.raises(ValidationError, match="takes the NAME"):
            block(api_key_env="9LIVES")
    assert ModelSettings.model_fields["timeout_s"].description == RewriterSettings.model_fields["timeout_s"].description


def test_describe_states_the_constraint_and_the_default():
    assert (
        describe(RewriteSettings, "hard_k")
        == "hard examples per iteration (one rewrite request each) (>= 1; default 3)"
    )
    assert describe(ModelSettings, "dtype").endswith("(auto | float32 | bfloat16 | float16; default auto)")
    assert "default 60.0" in describe(ModelSettings, "timeout_s") and "> 0" in describe(ModelSettings, "timeout_s")
