"""Model specs: identity, placement, dtype, and clear errors for models that can't be had offline."""

import pytest

from pmpo.data.examples import Supervised
from pmpo.errors import ContextLengthError, ModelNotAvailableError
from pmpo.models.loading import ModelSettings, load_model, resolve_checkpoint
from pmpo.scoring.loss import Scorer
from pmpo.text.rendering import render


def test_local_directory_identity_is_stable_and_content_based(tiny_model_dir, tmp_path):
    _, first = resolve_checkpoint(str(tiny_model_dir))
    _, second = resolve_checkpoint(str(tiny_model_dir))
    assert first == second and first.startswith(tiny_model_dir.name + "@sha256:")
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text().replace("512", "513"))
    _, other = resolve_checkpoint(str(tmp_path))
    assert other.split("@")[1] != first.split("@")[1]


def test_bundled_identity_names_the_file_hash():
    path, identity = resolve_checkpoint("smollm2-135m-instruct")
    assert identity.startswith("smollm2-135m-instruct@sha256:")
    assert (path / "model.safetensors").is_file()


def test_unknown_hub_model_says_how_to_make_it_available(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_checkpoint("no-such-org/no-such-model")
    message = str(err.value)
    assert "no-such-org/no-such-model" in message
    assert "huggingface-cli download" in message and "local directory" in message


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a directory"):
        resolve_checkpoint(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))


@pytest.mark.parametrize("placement", ["system", "user", "plain"])
def test_placements_put_prompt_before_input(tiny_lm, placement):
    context = render(tiny_lm.tokenizer, placement, "BE BRIEF", "What is 2+2?")
    assert "BE BRIEF" in context.prefix and "What is 2+2?" not in context.prefix
    assert context.middle.startswith("What is 2+2?")
    assert context.text.index("BE BRIEF") < context.text.index("What is 2+2?")


def test_settings_choose_dtype_and_placement(tiny_model_dir):
    lm = load_model(ModelSettings(spec=str(tiny_model_dir), dtype="bfloat16", placement="plain"))
    assert str(lm.dtype) == "torch.bfloat16" and lm.placement == "plain"
    assert next(lm.model.parameters()).dtype == lm.dtype


def test_example_longer_than_context_is_named(tiny_lm):
    too_long = Supervised("word " * 600, "positive")  # the tiny model's context is 512 tokens
    examples = [Supervised("fine", "ok"), too_long]
    with pytest.raises(ContextLengthError, match=r"example 1 is \d+ tokens .* over the model's context of 512"):
        Scorer(tiny_lm).loss_matrix(["Classify."], examples)
