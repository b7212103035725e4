"""Held-out evaluation: acc / acc_norm, generation length, per-example values, comparison."""

import numpy as np
import pytest

from pmpo.data import Dataset, MultipleChoice, Supervised
from pmpo.errors import PmpoError
from pmpo.evaluation.heldout import (
    ANSWER_MARGIN,
    Evaluation,
    EvaluationDelta,
    answer_budget,
    compare,
    evaluate,
    option_hits,
)
from pmpo.models import generation

REVIEW = Supervised("Great phone, love it.", "positive")


class FixedScorer:
    """An honest stand-in for Scorer.completions: summed NLL from a table, token count from the text."""

    def __init__(self, nll: dict[tuple[str, str], float]):
        self.nll = nll

    def completions(self, prompt, pairs, owner=None):
        return np.array([self.nll[p] for p in pairs]), np.array([len(c.split()) for _, c in pairs])


def test_acc_norm_divides_by_option_bytes_where_acc_does_not():
    # The correct long option has more NLL in total (acc picks the short one) but less per byte (acc_norm).
    heavily = "yes, heavily since this morning"
    long_right = MultipleChoice("Is it raining?", ("no", heavily), heavily)
    short_right = MultipleChoice("Is it cold?", ("yes", "no, it is a warm sunny day"), "yes")
    scorer = FixedScorer(
        {
            ("Is it raining?", "no"): 3.0,
            ("Is it raining?", "yes, heavily since this morning"): 6.0,
            ("Is it cold?", "yes"): 2.0,
            ("Is it cold?", "no, it is a warm sunny day"): 5.0,
        }
    )
    hits = option_hits(scorer, "Answer.", [long_right, short_right])
    assert hits.correct == (False, True)
    assert hits.correct_norm == (True, False)  # 6/31 < 3/2; 5/26 < 2/3


def test_evaluate_keeps_per_example_values_in_order(tiny_lm):
    questions = tuple(
        MultipleChoice(f"Question {i}: which?", ("alpha", "beta gamma delta"), ("alpha", "beta gamma delta")[i % 2])
        for i in range(5)
    )
    result = evaluate(tiny_lm, "Pick the answer.", Dataset("q", questions), max_new_tokens=2)
    assert len(result.example_losses) == len(result.example_correct) == len(result.example_option_correct) == 5
    assert result.loss == pytest.approx(np.mean(result.example_losses))
    assert result.accuracy == pytest.approx(np.mean(result.example_correct))
    assert result.option_accuracy == pytest.approx(np.mean(result.example_option_correct))
    assert result.option_accuracy_norm == pytest.approx(np.mean(result.example_option_correct_norm))
    # the promotion gate's tempered losses: one per example, their mean never above the loss's (t = 1 is among the
    # softenings, and the one chosen minimises the mean)
    assert len(result.example_tempered_losses) == 5
    assert np.mean(result.example_tempered_losses) <= result.loss + 1e-12
    plain = evaluate(tiny_lm, "Pick the answer.", Dataset("s", (REVIEW,)), generate=False)
    assert plain.option_accuracy_norm is None and plain.example_correct is None and len(plain.example_losses) == 1


def test_generation_length_follows_the_longest_reference(tiny_lm, monkeypatch):
    asked = []

    def recording_greedy(lm, texts, *, max_new_tokens, **kw):
        asked.append(max_new_tokens)
        return generation.greedy(lm, texts, max_new_tokens=max_new_tokens, **kw)

    monkeypatch.setattr("pmpo.models.decoding.greedy", recording_greedy)  # the in-process decoder's greedy
    long_answer = "The quick brown fox jumps over the lazy dog, then runs far away into the dark forest."
    short = Dataset("s", (REVIEW, Supervised("Bad.", "negative")))
    long = Dataset("l", (REVIEW, Supervised("Tell the story.", "story", aliases=(long_answer,))))
    evaluate(tiny_lm, "Classify.", short)
    evaluate(tiny_lm, "Classify.", long)
    evaluate(tiny_lm, "Classify.", long, max_new_tokens=5)  # a user's setting wins
    n_long = len(tiny_lm.tokenizer.encode(long_answer, add_special_tokens=False))
    n_short = max(len(tiny_lm.tokenizer.encode(t, add_special_tokens=False)) for t in ("positive", "negative"))
    assert asked == [n_short + ANSWER_MARGIN, n_long + ANSWER_MARGIN, 5]
    assert answer_budget(tiny_lm, long) == n_long + ANSWER_MARGIN


def _evaluation(losses, correct, option=None):
    return Evaluation(
        prompt="p",
        n_examples=len(losses),
        loss=float(np.mean(losses)),
        loss_per_token=0.0,
        accuracy=float(np.mean(correct)),
        option_accuracy=None if option is None else float(np.mean(option)),
        example_losses=tuple(losses),
        example_correct=tuple(correct),
        example_option_correct=option,
    )


def test_compare_gives_final_minus_initial_with_intervals():
    initial = _evaluation([3.0, 2.0, 4.0, 3.5] * 5, [False, True, False, True] * 5, (False, False, True, True) * 5)
    final = _evaluation([2.0, 1.5, 3.0, 3.0] * 5, [True, True, False, True] * 5, (False, False, True, True) * 5)
    delta = compare(initial, final, seed=1)
    assert delta.loss.estimate == pytest.approx(final.loss - initial.loss)
    assert delta.loss.low <= delta.loss.estimate <= delta.loss.high < 0
    assert delta.accuracy.estimate == pytest.approx(0.25) and delta.accuracy.low <= 0.25 <= delta.accuracy.high
    assert (delta.option_accuracy.low, delta.option_accuracy.high) == (0.0, 0.0)  # same hits: no change
    assert delta.option_accuracy_norm is None  # not measured
    assert compare(initial, final, seed=1) == delta
    with pytest.raises(PmpoError, match="same examples"):
        compare(initial, _evaluation([1.0], [True]))
    older = Evaluation("p", initial.n_examples, 3.0, 1.0, 0.5, None)  # no per-example values: nothing to pair
    assert compare(older, final) == EvaluationDelta(None, None, None, None)


def test_in_process_answers_are_the_greedy_answers_on_the_scorers_token_ids(tiny_lm, monkeypatch):
    """The decoder gets rendered texts; in-process it must answer exactly as greedy on `encode(...)` ids did."""
    from pmpo.data.examples import example_input
    from pmpo.text.encoding import encode

    answers = []

    def recording_greedy(lm, texts, *, max_new_tokens, **kw):
        answers.append(generation.greedy(lm, texts, max_new_tokens=max_new_tokens, **kw))
        return answers[-1]

    monkeypatch.setattr("pmpo.models.decoding.greedy", recording_greedy)
    data = Dataset("r", (REVIEW, Supervised("Bad, broke in a day.", "negative"), Supervised("Fine.", "positive")))
    for prompt in ("Classify.", "Classify this review: {{input}}"):
        evaluate(tiny_lm, prompt, data, max_new_tokens=6)
        ids = [encode(tiny_lm.tokenizer, tiny_lm.placement, prompt, example_input(e)).ids for e in data.examples]
        assert answers[-1] == generation.greedy(tiny_lm, ids, max_new_tokens=6)
