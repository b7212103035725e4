"""The remote scoring backend: offset picking and the self-check on recorded replies, then the whole client
path against a real HTTP server (tests/echo_server.py) that serves the bundled model in-process."""

from __future__ import annotations

import numpy as np
import pytest

from pmpo.data.examples import MultipleChoice, Supervised
from pmpo.errors import ContextLengthError
from pmpo.models.loading import TextSide
from pmpo.models.settings import ModelSettings
from pmpo.remote import CompletionsClient, RemoteError, RemoteScorer
from pmpo.remote.check import SENTENCE, check_text, judge, verified
from pmpo.remote.logprobs import LogprobsMissing, completion_nll, prompt_logprobs
from pmpo.scoring.loss import Scorer

# A recorded-style reply for "Q: hi\nA: yes" (12 chars) with one generated token: offsets of the server's tokens.
TEXT = "Q: hi\nA: yes"
CHOICE = {
    "index": 0,
    "text": TEXT + "!",
    "logprobs": {
        "tokens": ["Q", ":", " hi", "\n", "A", ":", " y", "es", "!"],
        "token_logprobs": [None, -1.0, -2.0, -0.5, -0.25, -0.125, -3.0, -0.75, -9.0],
        "text_offset": [0, 1, 2, 5, 6, 7, 8, 10, 12],
    },
}


def test_completion_tokens_are_found_by_character_offsets():
    assert completion_nll(CHOICE, TEXT, 8) == (3.75, 2)  # " y" + "es"; the generated "!" is not counted
    assert completion_nll(CHOICE, TEXT, 9) == (3.75, 2)  # " y" straddles the boundary: a target token
    assert completion_nll(CHOICE, TEXT, 10) == (0.75, 1)


def test_a_bos_the_server_leaves_out_of_its_tokens_moves_offsets_back():
    # llama-cpp-python: the text begins with BOS, the echoed tokens and their offsets start after it.
    text = "<s>ab cd"
    choice = {
        "index": 0,
        "text": text + "!",
        "logprobs": {"tokens": ["ab", " cd", "!"], "token_logprobs": [None, -2.0, -5.0], "text_offset": [0, 2, 5]},
    }
    assert completion_nll(choice, text, 5, lead="<s>") == (2.0, 1)
    with pytest.raises(LogprobsMissing, match="does not locate its tokens"):  # read as if nothing was left out
        completion_nll(choice, text, 5)


def test_the_first_token_cannot_be_a_target():
    with pytest.raises(LogprobsMissing, match="first token has no log-prob"):
        completion_nll(CHOICE, TEXT, 0)


@pytest.mark.parametrize(
    "reply, why",
    [
        ({"index": 0, "text": "!", "logprobs": None}, "no prompt log-probabilities"),
        ({"index": 0, "text": "!", "logprobs": {"token_logprobs": [-1.0], "text_offset": [0]}}, "did not echo"),
        ({**CHOICE, "logprobs": {**CHOICE["logprobs"], "text_offset": [0, 1]}}, "2 token offsets but 9"),
    ],
)
def test_a_reply_without_echoed_logprobs_is_refused_naming_what_is_missing(reply, why):
    with pytest.raises(LogprobsMissing, match=why):
        prompt_logprobs(reply, TEXT)


def test_the_self_check_refuses_misaligned_values_and_accepts_plausible_ones():
    judge(-3.93, -0.47, "here")  # SmolLM2-135M in-process
    with pytest.raises(RemoteError, match="misaligned by one position"):
        judge(-10.15, -11.15, "here")  # the same text with token i scored from the logits at i
    with pytest.raises(RemoteError, match="implausible"):
        judge(-0.1, -0.1, "here")  # a constant near zero: no gain from having read the sentence twice


def test_check_text_repeats_the_sentence():
    assert check_text().count(SENTENCE) == 3


def test_a_missing_key_variable_is_named_and_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("PMPO_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(
        RemoteError, match="model.api_key_env: the environment variable PMPO_TEST_NO_SUCH_KEY is not set"
    ):
        CompletionsClient(
            ModelSettings(backend="openai", base_url="http://127.0.0.1:9/v1", api_key_env="PMPO_TEST_NO_SUCH_KEY")
        )


def test_a_server_that_is_down_gets_a_clear_error():
    from testkit.echo_server import free_port

    client = CompletionsClient(
        ModelSettings(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout_s=5)
    )
    with pytest.raises(RemoteError, match="cannot reach the scoring server .* is it running"):
        client.identity()


# --- against a real HTTP server (ours) serving the bundled model in-process ---------------------------------


@pytest.fixture(scope="module")
def text_side(real_lm):
    return TextSide(real_lm.tokenizer, real_lm.placement, real_lm.context_length)


@pytest.fixture(scope="module")
def echo_url(real_lm):
    from testkit.echo_server import echo_app, serving

    with serving(echo_app(real_lm, "smol")) as url:
        yield url


EXAMPLES = [
    Supervised("The film was a delight from start to finish.", "positive"),
    Supervised("A dull, plodding mess.", "negative"),
    MultipleChoice("Is 'I loved it' positive or negative?", ("positive", "negative"), "positive"),
]
PROMPTS = [
    "Classify the sentiment of the review.",
    "Answer with one word: positive or negative.",
    "Translate to French.",
]


@pytest.mark.real_model
def test_remote_losses_match_the_in_process_scorer(real_lm, text_side, echo_url):
    remote = RemoteScorer(
        text_side,
        CompletionsClient(ModelSettings(backend="openai", base_url=echo_url, model="smol", prompts_per_request=2)),
    )
    got = remote.loss_matrix(PROMPTS, EXAMPLES)
    want = Scorer(real_lm).loss_matrix(PROMPTS, EXAMPLES)
    np.testing.assert_array_equal(got.tokens, want.tokens)  # the same target tokens, found by offsets
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-3, atol=1e-3)
    assert remote.served.facts().prompts_per_request == 2  # the server takes several prompts per request
    assert remote.served.facts().last_copy > -1.0
    assert remote.served.identity() == f"openai:{echo_url}#smol@unpinned"
    assert remote.usage.snapshot().tokens_scored > 0


@pytest.mark.real_model
def test_a_misaligned_server_is_refused_before_any_loss(real_lm, text_side):
    from testkit.echo_server import echo_app, serving

    with serving(echo_app(real_lm, "smol", shift=1)) as url:
        remote = RemoteScorer(text_side, CompletionsClient(ModelSettings(backend="openai", base_url=url, model="smol")))
        with pytest.raises(RemoteError, match="misaligned by one position"):
            remote.loss_matrix(PROMPTS[:1], EXAMPLES[:1])


@pytest.mark.real_model
def test_wrong_model_name_lists_what_the_server_serves(echo_url):
    with pytest.raises(RemoteError, match="does not serve a model named 'big'; it serves 'smol'"):
        CompletionsClient(ModelSettings(backend="openai", base_url=echo_url, model="big")).identity()


@pytest.mark.real_model
def test_a_chat_only_endpoint_is_refused_naming_completions(real_lm):
    from testkit.echo_server import echo_app, serving

    with serving(echo_app(real_lm, "smol", completions=False)) as url:
        with pytest.raises(RemoteError, match="no /completions endpoint .* chat-only endpoint cannot return them"):
            verified(CompletionsClient(ModelSettings(backend="openai", base_url=url, model="smol", max_retries=0)))


@pytest.mark.real_model
def test_a_refused_key_is_reported_without_the_key(real_lm, monkeypatch):
    from testkit.echo_server import echo_app, serving

    monkeypatch.setenv("PMPO_TEST_KEY", "sk-WRONG-7f3a9c")
    with serving(echo_app(real_lm, "smol", key="sk-right")) as url:
        with pytest.raises(RemoteError) as err:
            CompletionsClient(
                ModelSettings(backend="openai", base_url=url, model="smol", api_key_env="PMPO_TEST_KEY")
            ).identity()
    assert "refused the API key from $PMPO_TEST_KEY" in str(err.value)
    assert "sk-WRONG" not in str(err.value)


@pytest.mark.real_model
def test_an_example_over_the_context_is_refused_before_sending(real_lm, echo_url):
    small = TextSide(real_lm.tokenizer, real_lm.placement, 16)
    remote = RemoteScorer(small, CompletionsClient(ModelSettings(backend="openai", base_url=echo_url, model="smol")))
    with pytest.raises(ContextLengthError, match="over the model's context of 16"):
        remote.loss_matrix(PROMPTS[:1], EXAMPLES[:1])


# --- config and CLI ------------------------------------------------------------------------------------------


def test_cli_flags_fill_the_model_block():
    from flows.config import OptimizeConfig
    from pmpo_cli.main import build_parser
    from pmpo_cli.options import config_values

    argv = [
        "optimize",
        "--backend",
        "openai",
        "--base-url",
        "http://h:8000/v1",
        "--served-model",
        "m",
        "--api-key-env",
        "MY_KEY",
        "--tokenizer",
        "org/tok",
        "--max-concurrency",
        "8",
    ]
    config = OptimizeConfig.model_validate(config_values(build_parser().parse_args(argv)))
    settings = config.model
    assert (settings.base_url, settings.model, settings.api_key_env, settings.max_concurrency) == (
        "http://h:8000/v1",
        "m",
        "MY_KEY",
        8,
    )
    assert config.model.tokenizer == "org/tok"


@pytest.mark.parametrize(
    "model, why",
    [
        ({"backend": "openai"}, "model: backend openai needs base_url"),
        (
            {"backend": "openai", "base_url": "http://h/v1", "api_key_env": "sk-abc123"},
            "model.api_key_env: takes the NAME of an environment variable",
        ),
        ({"backend": "vllm"}, "model.backend"),
    ],
)
def test_bad_remote_config_is_one_line_naming_the_field(model, why):
    from flows.config import ConfigError, OptimizeConfig, build

    with pytest.raises(ConfigError, match=why) as err:
        build(OptimizeConfig, {"model": model})
    assert "sk-abc123" not in str(err.value)  # a key pasted in the wrong field is not repeated back
