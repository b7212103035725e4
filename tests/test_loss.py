"""The scorer: target masking, batching, prefix reuse and the preference loss, against the naive loop."""

import math

import numpy as np
import pytest

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.loss import Scorer, ScorerSettings, _batches, preference_loss
from pmpo.reference import naive_nll

PROMPTS = ["Classify the sentiment as positive or negative.", "", "Line one.\nLine two is longer than line one."]
EXAMPLES = [
    Supervised("Review: great phone.", "positive"),
    Supervised("Review: it broke on the first day and support never answered my emails.", "negative"),
    Supervised("x", "a much longer reference output that spans many tokens, to force padding"),
]


def naive_matrix(lm, prompts, examples):
    return np.array([[naive_nll(lm, p, e.input, e.target)[0] for e in examples] for p in prompts])


@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("budget", [16, 4096])
def test_batched_equals_naive_on_tiny_model(tiny_lm, reuse_prefix, budget):
    scorer = Scorer(tiny_lm, ScorerSettings(token_budget=budget, reuse_prefix=reuse_prefix))
    matrix = scorer.loss_matrix(PROMPTS, EXAMPLES)
    assert matrix.loss.shape == (3, 3)
    np.testing.assert_allclose(matrix.loss, naive_matrix(tiny_lm, PROMPTS, EXAMPLES), rtol=1e-4)


def test_only_target_tokens_count(tiny_lm):
    scorer = Scorer(tiny_lm)
    matrix = scorer.loss_matrix(PROMPTS[:1], EXAMPLES)
    expected = [len(tiny_lm.tokenizer(e.target, add_special_tokens=False)["input_ids"]) for e in EXAMPLES]
    assert matrix.tokens[0].tolist() == expected
    # Changing the input changes the loss (it is conditioned on), but the count of scored tokens stays.
    other = scorer.loss_matrix(PROMPTS[:1], [Supervised("something else entirely", EXAMPLES[0].target)])
    assert other.tokens[0, 0] == expected[0]
    assert other.loss[0, 0] != pytest.approx(matrix.loss[0, 0])


def test_loss_is_a_sum_and_per_token_is_the_mean(tiny_lm):
    matrix = Scorer(tiny_lm).loss_matrix(PROMPTS[:1], EXAMPLES)
    assert matrix.prompt_loss()[0] == pytest.approx(matrix.loss[0].mean())
    assert matrix.prompt_loss_per_token()[0] == pytest.approx(matrix.nll[0].sum() / matrix.tokens[0].sum())


def test_memo_scores_each_pair_once(tiny_lm):
    scorer = Scorer(tiny_lm)
    scorer.loss_matrix(PROMPTS, EXAMPLES)
    computed = scorer.tokens_computed
    again = scorer.loss_matrix(list(reversed(PROMPTS)), EXAMPLES)
    assert scorer.tokens_computed == computed
    assert again.loss.shape == (3, 3)


def test_preference_loss_matches_formula(tiny_lm):
    example = Preference("Say hi.", "hi", ("goodbye forever", "no"))
    scorer = Scorer(tiny_lm)
    matrix = scorer.loss_matrix(PROMPTS[:1], [example])
    chosen = naive_nll(tiny_lm, PROMPTS[0], example.input, "hi")[0]
    rejected = [naive_nll(tiny_lm, PROMPTS[0], example.input, r)[0] for r in example.rejected]
    expected = np.mean([-math.log(1 / (1 + math.exp(-(r - chosen)))) for r in rejected])
    assert matrix.loss[0, 0] == pytest.approx(expected, rel=1e-4)
    assert matrix.nll[0, 0] == pytest.approx(chosen, rel=1e-4)


def test_multiple_choice_scored_either_way(tiny_lm):
    example = MultipleChoice("Pick one.", ("yes", "no", "maybe"), "no")
    ce = Scorer(tiny_lm).loss_matrix(PROMPTS[:1], [example])
    pref = Scorer(tiny_lm, ScorerSettings(mc_objective="preference")).loss_matrix(PROMPTS[:1], [example])
    assert ce.loss[0, 0] == pytest.approx(naive_nll(tiny_lm, PROMPTS[0], "Pick one.", "no")[0], rel=1e-4)
    assert pref.loss[0, 0] != pytest.approx(ce.loss[0, 0])
    assert pref.nll[0, 0] == pytest.approx(ce.nll[0, 0])


def test_preference_loss_properties():
    assert preference_loss(1.0, [1.0]) == pytest.approx(math.log(2))
    assert preference_loss(0.0, [50.0]) < 1e-10  # chosen far more likely: no loss
    assert preference_loss(50.0, [0.0]) == pytest.approx(50.0)  # stable for large margins
    assert preference_loss(1.0, [2.0, 3.0]) == pytest.approx((preference_loss(1.0, [2.0]) + preference_loss(1.0, [3.0])) / 2)


def test_batches_respect_budget():
    lengths = [10, 9, 9, 5, 3, 3, 1]
    batches = _batches(list(range(7)), lengths, budget=20)
    assert [i for b in batches for i in b] == list(range(7))
    assert all(len(b) * lengths[b[0]] <= 20 or len(b) == 1 for b in batches)
