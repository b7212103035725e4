"""The self-check's order test (vllm-project/vllm#42019) and SGLang's offset-less echo: the rules on recorded
values, then real HTTP servers from the test kit serving the bundled model: a correct one, one whose log-probs
depend on request order (vLLM's prefix-cache bug, reduced), and one that echoes as SGLang does."""

from __future__ import annotations

import numpy as np
import pytest

from pmpo.models.loading import TextSide
from pmpo.models.settings import ModelSettings
from pmpo.remote import CompletionsClient, RemoteError, RemoteScorer
from pmpo.remote.check import MAX_ORDER_GAP, judge_order, order_gaps, order_texts, verified
from pmpo.remote.logprobs import LogprobsMissing, TokenLogprobs, completion_nll, prompt_logprobs, spelled_offsets


def test_order_texts_share_a_prefix_that_opens_with_a_fresh_number():
    a, b = order_texts(nonce=7)
    shared = len(a) - len(a.split(".")[-2]) - 1
    assert a != b and a[:shared] == b[:shared] and a.startswith("Note 7: ")
    assert order_texts()[0] != order_texts()[0]  # each process's probe misses any cache an earlier one filled
    assert order_texts("<s>", 3)[0].startswith("<s>Note 3: ")  # a prepended BOS leads, as in every scored text


def test_order_gaps_compare_one_text_token_by_token():
    x = TokenLogprobs((0, 2, 5), (None, -1.0, -2.0), 8)
    assert order_gaps(x, TokenLogprobs((0, 2, 5), (None, -1.0, -2.5), 8)) == (0.25, 0.5)
    assert order_gaps(x, TokenLogprobs((0, 3), (None, -1.0), 8)) == (float("inf"), float("inf"))


def test_the_order_test_allows_batching_noise_and_refuses_stale_values():
    judge_order(0.01, 0.2, "here")  # bf16 batching noise
    with pytest.raises(RemoteError, match="fails the order test.*--no-enable-prefix-caching.*vllm#42019"):
        judge_order(0.5, 4.0, "here")
    with pytest.raises(RemoteError, match="fails the order test"):
        judge_order(0.03, 3.0, "here")  # one stale token the mean dilutes


# SGLang's echo: text_offset -1 for every token, a BOS the text does not hold, one generated token after it.
SGLANG = {
    "index": 0,
    "text": "Q: hi\nA: yes!",
    "logprobs": {
        "tokens": ["<|begin_of_text|>", "Q", ":", " hi", "\n", "A", ":", " y", "es", "!"],
        "token_logprobs": [None, -4.0, -1.0, -2.0, -0.5, -0.25, -0.125, -3.0, -0.75, -9.0],
        "text_offset": [-1] * 10,
    },
}


def test_sglang_offsets_are_read_off_the_tokens():
    assert spelled_offsets(SGLANG["logprobs"]["tokens"], SGLANG["text"]) == [-1, 0, 1, 2, 5, 6, 7, 8, 10, 12]
    assert completion_nll(SGLANG, "Q: hi\nA: yes", 8) == (3.75, 2)  # " y" + "es", as with vLLM's offsets
    assert prompt_logprobs(SGLANG, "Q: hi\nA: yes").logprobs[0] == -4.0  # the BOS is left out, "Q" keeps its value


@pytest.mark.parametrize(
    "tokens, why",
    [
        (["Q", ": h", "\ufffd", "\ufffd"], "holds part of a character"),
        (["Q", ":", " ho"], "do not spell the text"),
    ],
)
def test_tokens_that_cannot_be_placed_are_refused(tokens, why):
    with pytest.raises(LogprobsMissing, match=why):
        spelled_offsets(tokens, "Q: hi")


# --- against real HTTP servers serving the bundled model -----------------------------------------------------


def _client(url: str, **settings) -> CompletionsClient:
    return CompletionsClient(ModelSettings(backend="openai", base_url=url, model="smol", max_retries=0, **settings))


@pytest.mark.real_model
@pytest.mark.parametrize("per_request", [1, 16])
def test_a_correct_server_passes_the_order_test(real_lm, per_request):
    from testkit.echo_server import echo_app, serving

    requests: list = []
    with serving(echo_app(real_lm, "smol", requests=requests)) as url:
        facts = verified(_client(url, prompts_per_request=per_request))
    assert facts.order_gap is not None and facts.order_gap < 1e-4  # fp32 on CPU: the same numbers either way
    probes = [r["prompt"] for r in requests if any("Note " in p for p in r["prompt"])]
    # sent as scoring sends them: A and B together, then B and A; or one text per request
    assert [len(p) for p in probes] == ([2, 2] if per_request > 1 else [1, 1, 1, 1])


@pytest.mark.real_model
@pytest.mark.parametrize("per_request", [1, 16])
def test_a_server_whose_log_probs_depend_on_request_order_is_refused(real_lm, per_request):
    from testkit.echo_server import echo_app, serving

    with serving(echo_app(real_lm, "smol", stale_prefix=True)) as url:
        with pytest.raises(RemoteError, match=r"fails the order test.*depend on request order") as err:
            verified(_client(url, prompts_per_request=per_request))
    assert float(str(err.value).split(" nats/token apart")[0].split()[-1]) > MAX_ORDER_GAP


@pytest.mark.real_model
def test_an_sglang_style_echo_scores_as_the_in_process_model(real_lm):
    from pmpo.data.examples import Supervised
    from pmpo.scoring.loss import Scorer
    from testkit.echo_server import echo_app, serving

    text = TextSide(real_lm.tokenizer, real_lm.placement, real_lm.context_length)
    examples = [Supervised("A dull, plodding mess.", "negative"), Supervised("What a delight.", "positive")]
    prompts = ["Classify the sentiment of the review.", "Translate to French."]
    with serving(echo_app(real_lm, "smol", offsets=False)) as url:
        remote = RemoteScorer(text, _client(url, prompts_per_request=4))
        got = remote.loss_matrix(prompts, examples)
        assert remote.served.facts().order_gap is not None  # the self-check ran in full, order test included
    want = Scorer(real_lm).loss_matrix(prompts, examples)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-3, atol=1e-3)
