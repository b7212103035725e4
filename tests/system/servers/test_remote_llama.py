"""Scoring against a real third-party server: llama-cpp-python serving the bundled GGUF (SmolLM2-135M, Q4_1).

Its echoed prompt log-probabilities are misaligned by one position unless the text begins with a BOS token,
which it drops from the echo; its offsets count no characters for special tokens. pmpo must refuse it in the
default setting and for chat-template texts, and with `prepend_bos` on plain texts rank prompts as the
in-process fp32 model does.
"""

from __future__ import annotations

import numpy as np
import pytest

from pmpo.data.examples import Supervised
from pmpo.models.decoding import LocalDecoder
from pmpo.models.loading import ModelSettings, TextSide, load_model
from pmpo.remote import CompletionsClient, RemoteError, RemoteScorer
from pmpo.scoring.loss import Scorer
from testkit.llama_server import SKIP_REASON, available, llama_server

pytestmark = [pytest.mark.server, pytest.mark.real_model, pytest.mark.skipif(not available(), reason=SKIP_REASON)]

BOS = "<|im_start|>"  # SmolLM2's BOS token (id 1); its chat template opens every message with it
EXAMPLES = [
    Supervised("Review: A dull, plodding mess.\nSentiment:", "negative"),
    Supervised("Review: The film was a delight.\nSentiment:", "positive"),
]
PROMPTS = [
    "Classify the sentiment of the review.",
    "Translate to French.",
    "Say whether the review is positive or negative.",
]


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


def spearman(a, b) -> float:
    """Rank correlation (no ties expected among a few real losses)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _scorer(url: str, placement: str, **settings) -> RemoteScorer:
    lm_text = load_model_text(placement)
    return RemoteScorer(
        lm_text,
        CompletionsClient(ModelSettings(backend="openai", base_url=url, model="smol", max_concurrency=1, **settings)),
    )


def load_model_text(placement: str) -> TextSide:
    from pmpo.models.loading import load_text_side

    return load_text_side(ModelSettings(placement=placement))


def test_the_self_check_refuses_llama_cpp_as_it_is(llama_url):
    with pytest.raises(
        RemoteError, match=r"implausible prompt log-probabilities.*misaligned by one position.*prepend_bos"
    ):
        _scorer(llama_url, "plain").loss_matrix(PROMPTS[:1], EXAMPLES[:1])


def test_chat_template_texts_are_refused_because_offsets_skip_special_tokens(llama_url):
    scorer = _scorer(llama_url, "system", prepend_bos=True)
    with pytest.raises(RemoteError, match="does not locate its tokens.*special tokens"):
        scorer.loss_matrix(PROMPTS[:1], EXAMPLES[:1])
    assert scorer.served.facts().last_copy > -1.0  # the check itself passed: alignment is right after a BOS
    # ...and the order test: llama-cpp-python reuses the previous prompt's KV for a common prefix, which must not
    # change the prefix's log-probs (vLLM's prefix cache does: vllm-project/vllm#42019)
    assert scorer.served.facts().order_gap is not None and scorer.served.facts().order_gap < 0.05


def test_with_prepend_bos_plain_texts_rank_prompts_as_the_in_process_model(llama_url):
    # Identical texts on both sides: the prompt itself begins with BOS, so prepend_bos adds nothing and the
    # in-process tokenizer reads the same special token; only the weights differ (Q4_1 served, fp32 here).
    prompts = [BOS + p for p in PROMPTS]
    remote = _scorer(llama_url, "plain", prepend_bos=True).loss_matrix(prompts, EXAMPLES)
    local = Scorer(load_model(ModelSettings(dtype="float32", placement="plain"))).loss_matrix(prompts, EXAMPLES)
    np.testing.assert_array_equal(remote.tokens, local.tokens)
    assert spearman(remote.prompt_loss(), local.prompt_loss()) == pytest.approx(1.0)
    largest = float(np.max(np.abs(remote.loss - local.loss) / local.loss))
    print(f"llama.cpp Q4_1 vs in-process fp32: Spearman 1.0, largest relative loss difference {largest:.3f}")
    assert largest < 0.05  # quantisation moves a loss by a few percent (measured: 2.2%)


def test_a_wrong_model_name_lists_the_served_one(llama_url):
    with pytest.raises(RemoteError, match="does not serve a model named 'big'; it serves 'smol'"):
        CompletionsClient(ModelSettings(backend="openai", base_url=llama_url, model="big")).identity()


def test_llama_cpp_without_logits_all_is_named(tmp_path):
    with llama_server(tmp_path / "server.log", logits_all=False) as url:
        client = CompletionsClient(ModelSettings(backend="openai", base_url=url, model="smol", max_retries=0))
        with pytest.raises(RemoteError, match="logits_all"):
            RemoteScorer(load_model_text("plain"), client).loss_matrix(PROMPTS[:1], EXAMPLES[:1])


def test_greedy_answers_through_the_server_agree_with_the_in_process_model(llama_url):
    # Plain texts, BOS prepended as for scoring. Q4_1 against fp32 drifts after a few tokens (measured: " 4\nExplanation"
    # served, " 4\n\nThe answer" here), so only the answers' first words are compared.
    texts = ["Question: What is 2 + 2?\nAnswer:", "The opposite of hot is"]
    scorer = _scorer(llama_url, "plain", prepend_bos=True)
    served = scorer.decoder().greedy(texts, 4)
    local = LocalDecoder(load_model(ModelSettings(dtype="float32", placement="plain"))).greedy(texts, 4)
    print(f"llama.cpp greedy: {served}; in-process: {local}")
    assert [s.split()[:1] for s in served] == [t.split()[:1] for t in local] == [["4"], ["cold."]]
    assert scorer.usage.snapshot().tokens_generated > 0  # counted from the reply's `usage`
