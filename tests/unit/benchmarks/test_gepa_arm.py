"""The GEPA arm of the quality benchmark: budget, adapter, reflection records, and GEPA's loop on scripted replies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import gepa_arm  # noqa: E402

from pmpo.data.examples import Dataset, MultipleChoice  # noqa: E402
from pmpo.text.rendering import render  # noqa: E402

needs_gepa = pytest.mark.skipif(gepa_arm.gepa is None, reason="the gepa package is not installed (bench extra)")


def _train(n: int = 6) -> Dataset:
    targets = ["plausible" if i % 2 else "implausible" for i in range(n)]
    return Dataset(
        "t", tuple(MultipleChoice(f"Player {i} scored", ("plausible", "implausible"), t) for i, t in enumerate(targets))
    )


def test_reflective_record_uses_gepas_feedback_wording_and_shows_the_options():
    right = gepa_arm.Trace("Player 1 scored", "It is plausible.", ("plausible",), ("plausible", "implausible"), True)
    wrong = gepa_arm.Trace("2 + 2", "5", ("4",), (), False)
    assert gepa_arm.reflective_record(right) == {
        "Inputs": "Player 1 scored\nOptions: plausible, implausible",
        "Generated Outputs": "It is plausible.",
        "Feedback": "The generated response is correct. The response includes the correct answer 'plausible'.",
    }
    record = gepa_arm.reflective_record(wrong)
    assert record["Inputs"] == "2 + 2"
    assert record["Feedback"].startswith("The generated response is incorrect. The correct answer is '4'.")


def test_budget_counts_scored_prefilled_and_generated_tokens_since_it_was_made(tiny_lm):
    tiny_lm.usage.scored(5)  # before the budget: not counted
    budget = gepa_arm.Budget(tiny_lm, 100)
    tiny_lm.usage.scored(40)
    tiny_lm.usage.generated(10, passes=10, prefilled=30)
    assert budget.spent() == 80 and not budget.exhausted()
    budget.check()
    tiny_lm.usage.generated(20, passes=20)
    assert budget.exhausted(object())  # GEPA's stop callbacks receive the state
    with pytest.raises(gepa_arm.BudgetSpent, match="100 of 100"):
        budget.check()


def test_pool_picks_the_best_mean_the_earlier_on_ties():
    pool = gepa_arm.Pool()
    for text, score in [("seed", 0.5), ("a", 0.75), ("b", 0.75), ("c", 0.25)]:
        pool.on_valset_evaluated({"candidate": {"instruction": text}, "average_score": score})
    assert pool.candidates[pool.best()] == "a"


@needs_gepa
def test_evaluate_answers_greedily_under_the_candidate_and_scores_with_the_contains_rule(monkeypatch, tiny_lm):
    seen = {}

    def fake_greedy(lm, texts, *, max_new_tokens):
        seen["texts"], seen["max_new_tokens"] = texts, max_new_tokens
        return ["It is plausible.", "plausible or implausible", "implausible"]

    monkeypatch.setattr(gepa_arm, "greedy", fake_greedy)
    train = _train(3)  # targets: implausible, plausible, implausible
    adapter = gepa_arm.EvaluationAdapter(tiny_lm, train, gepa_arm.Budget(tiny_lm, 10**9))
    out = adapter.evaluate(list(train.examples), {"instruction": "Judge the sentence."}, capture_traces=True)
    assert out.scores == [0.0, 0.0, 1.0]  # a reply naming both labels is wrong
    assert (
        seen["texts"][1] == render(tiny_lm.tokenizer, tiny_lm.placement, "Judge the sentence.", "Player 1 scored").text
    )
    assert seen["max_new_tokens"] == gepa_arm.answer_budget(tiny_lm, train)  # as the held-out evaluation
    assert [t.correct for t in out.trajectories] == [False, False, True]
    assert out.trajectories[0].options == ("plausible", "implausible")
    assert adapter.evaluate(list(train.examples), {"instruction": "x"}).trajectories is None
    records = adapter.make_reflective_dataset({"instruction": "x"}, out, ["instruction"])
    assert [r["Generated Outputs"] for r in records["instruction"]] == [
        "It is plausible.",
        "plausible or implausible",
        "implausible",
    ]


@needs_gepa
def test_evaluate_refuses_once_the_budget_is_spent(tiny_lm):
    budget = gepa_arm.Budget(tiny_lm, 1)
    tiny_lm.usage.scored(1)
    with pytest.raises(gepa_arm.BudgetSpent):
        gepa_arm.EvaluationAdapter(tiny_lm, _train(), budget).evaluate(list(_train().examples), {"instruction": "x"})


@needs_gepa
def test_gepa_keeps_the_reflected_instruction_that_answers_right(monkeypatch, tiny_lm):
    """Scripted model: answers are right only under the instruction the reflection writes; GEPA must keep it."""
    train = _train()
    reflections = []

    def fake_sample(lm, text, n, **kwargs):
        reflections.append(text)
        lm.usage.generated(50, passes=50, prefilled=500)
        return ["Here is a better one:\n```\nSay plausible only for real sports moves.\n```"]

    def fake_greedy(lm, texts, *, max_new_tokens):
        lm.usage.generated(5 * len(texts), passes=5, prefilled=100 * len(texts))
        good = "Say plausible only" in texts[0]
        return [e.target if good else "no idea" for e in _matching(train, texts)]

    monkeypatch.setattr(gepa_arm, "sample", fake_sample)
    monkeypatch.setattr(gepa_arm, "greedy", fake_greedy)
    found = gepa_arm.gepa_run(tiny_lm, train, "Judge the sentence.", token_budget=10_000, seed=0)
    assert found.kept[0] == "Judge the sentence." and found.accuracies[0] == 0.0
    assert found.best == "Say plausible only for real sports moves." and found.best_accuracy == 1.0
    assert found.proposed == len(reflections) >= 1
    assert "Judge the sentence." in reflections[0] and "The correct answer is" in reflections[0]  # GEPA's prompt
    assert found.stopped_by_budget and 10_000 <= found.forward_tokens <= 10_000 + 6 * 105
    assert gepa_arm.gepa_search(tiny_lm, train, "Judge the sentence.", token_budget=10_000, seed=0) == (
        found.best,
        found.proposed,
    )


@needs_gepa
def test_a_budget_below_the_seeds_own_evaluation_returns_the_initial_prompt(monkeypatch, tiny_lm):
    monkeypatch.setattr(gepa_arm, "greedy", lambda lm, texts, **k: lm.usage.scored(10**6) or ["x"] * len(texts))
    found = gepa_arm.gepa_run(tiny_lm, _train(), "Judge the sentence.", token_budget=5, seed=0)
    assert found.best == "Judge the sentence." and found.proposed == 0 and found.stopped_by_budget


def test_without_gepa_the_arm_says_how_to_install_it(monkeypatch, tiny_lm):
    monkeypatch.setattr(gepa_arm, "gepa", None)
    with pytest.raises(gepa_arm.GepaNotInstalled, match="gepa==0.1.4"):
        gepa_arm.gepa_search(tiny_lm, _train(), "Judge.", token_budget=100, seed=0)


def _matching(train: Dataset, texts):
    """The training example each rendered context was built from (its input is in the text)."""
    return [next(e for e in train.examples if e.input in t) for t in texts]
