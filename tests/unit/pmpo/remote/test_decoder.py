"""Greedy answers through the scoring server (tests/echo_server.py): held-out accuracy, the decoder contract,
and the FULL diagnosis's greedy answer of a served scored model."""

from __future__ import annotations

import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.evaluation.heldout import answer_budget, evaluate
from pmpo.models.decoding import LocalDecoder
from pmpo.models.loading import TextSide
from pmpo.models.settings import ModelSettings
from pmpo.remote import CompletionsClient, RemoteScorer
from pmpo.rewriting.diagnosis import preferred_answer
from pmpo.text.rendering import render
from testkit.echo_server import echo_app, serving

PROMPT = "Classify the sentiment of the review."
REVIEWS = Dataset(
    "reviews",
    (
        Supervised("Review: a great film.", "positive"),
        Supervised("Review: a great cast, sadly.", "negative"),
        Supervised("Review: dull.", "negative"),
        Supervised("Review: awful.", "negative"),
        Supervised("Review: dull, then great.", "positive"),
    ),
)


def rule(text: str) -> str:
    """The server's fixed answers: "great" reads as positive; after "awful" comes text a stop must cut off."""
    if "awful" in text:
        return " negative<|im_end|> positive"  # without the stop, both labels: wrong under `contains`
    return " positive" if "great" in text else " negative"


def side_of(lm) -> TextSide:
    return TextSide(lm.tokenizer, lm.placement, lm.context_length)


def remote_scorer(lm, url: str, **settings) -> RemoteScorer:
    # check off: random weights cannot pass the self-check (it still finds prompts_per_request)
    return RemoteScorer(
        side_of(lm),
        CompletionsClient(ModelSettings(backend="openai", base_url=url, model="tiny", check=False, **settings)),
    )


def test_heldout_accuracy_of_a_served_model_comes_from_the_servers_answers(tiny_lm):
    requests: list[dict] = []
    with serving(echo_app(tiny_lm, "tiny", answer=rule, requests=requests)) as url:
        scorer = remote_scorer(tiny_lm, url, prompts_per_request=2, max_concurrency=2)
        result = evaluate(side_of(tiny_lm), PROMPT, REVIEWS, scorer=scorer)
    assert result.example_correct == (True, False, True, True, True)  # the rule's answers, in dataset order
    assert result.accuracy == pytest.approx(0.8)
    asked = [r for r in requests if not r.get("echo")]
    # prompts_per_request per request; two in flight at once, so they may arrive in either order
    assert sorted(len(r["prompt"]) for r in asked) == [1, 2, 2]
    for body in asked:
        assert body["temperature"] == 0 and body["max_tokens"] == answer_budget(tiny_lm, REVIEWS)
        assert "<|im_end|>" in body["stop"]
    sent = [t for r in asked for t in r["prompt"]]  # in the order requests arrived (two in flight at once)
    assert sorted(sent) == sorted(
        render(tiny_lm.tokenizer, tiny_lm.placement, PROMPT, e.input).text for e in REVIEWS.examples
    )
    used = scorer.usage.snapshot()  # the reply's `usage` field, counted on the scorer
    assert used.tokens_prefilled == sum(len(tiny_lm.tokenizer(t)["input_ids"]) for t in sent)
    assert used.tokens_generated == sum(
        len(tiny_lm.tokenizer.encode(rule(t).split("<|im_end|>")[0], add_special_tokens=False)) for t in sent
    )


def test_the_servers_greedy_answers_equal_the_in_process_ones_on_the_same_weights(tiny_lm):
    texts = [render(tiny_lm.tokenizer, tiny_lm.placement, PROMPT, e.input).text for e in REVIEWS.examples[:3]]
    local = LocalDecoder(tiny_lm).greedy(texts, 12)
    with serving(echo_app(tiny_lm, "tiny")) as url:
        remote = remote_scorer(tiny_lm, url).decoder().greedy(texts, 12)
    assert remote == local
    assert any(local)  # random weights still say something within 12 tokens


def test_the_full_diagnosis_of_a_served_model_shows_the_servers_greedy_answer(tiny_lm):
    example = Supervised("2+2?", "4")
    with serving(echo_app(tiny_lm, "tiny", answer=lambda text: " four, surely")) as url:
        scorer = remote_scorer(tiny_lm, url)
        preferred = preferred_answer(scorer.lm, scorer, "Answer.", example)
    assert preferred is not None and (preferred.text, preferred.kind) == ("four, surely", "greedy")


def test_bos_is_sent_once_and_a_reply_without_usage_is_counted_by_the_local_tokenizer(tiny_lm):
    requests: list[dict] = []
    bos = tiny_lm.tokenizer.bos_token
    texts = ["Question: 2+2?\nAnswer:", bos + "Question: 3+3?\nAnswer:"]
    with serving(echo_app(tiny_lm, "tiny", answer=lambda text: " 4", requests=requests, usage=False)) as url:
        scorer = remote_scorer(tiny_lm, url, prepend_bos=True)
        decoder = scorer.decoder()
        assert decoder.greedy(texts, 0) == ["", ""]  # no budget: nothing asked (llama.cpp reads 0 as "no limit")
        assert requests == []
        assert decoder.greedy(texts, 5) == [" 4", " 4"]
    sent = [t for r in requests if not r.get("echo") for t in r["prompt"]]
    assert sent == [bos + texts[0], texts[1]]  # never two BOS, as in scoring
    used = scorer.usage.snapshot()
    count = lambda text: len(tiny_lm.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    assert (used.tokens_prefilled, used.tokens_generated) == (sum(map(count, sent)), 2 * count(" 4"))
