"""The budget: the loop stops at the first step boundary after max_tokens or max_seconds are spent, keeps the
best prompt so far, says it stopped on budget, and counts the cut iteration's work; on the tiny random model."""

from pmpo.data import load_dataset, split_dataset
from pmpo.loop.optimizer import PMPO
from pmpo.loop.plan import Layout, scoring_work
from pmpo.loop.settings import BudgetSettings, OptimizerConfig
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.loss import Scorer
from pmpo.scoring.settings import ScorerSettings
from support.rewriters import ScriptedRewriter

PROMPT = "Read the review. Answer with one word: positive or negative."


def _variants(seed: int, n: int) -> list[str]:
    """Two distinct variants per request."""
    return [f"Read it {seed % 997} {i}. Say positive or negative." for i in range(n)]


def _train():
    return split_dataset(load_dataset("builtin:sentiment", limit=40), seed=0, train_fraction=1.0, train_cap=8).train


def _run(tiny_lm, budget: BudgetSettings):
    rewriter = ScriptedRewriter(_variants, "variants")
    config = OptimizerConfig(iterations=3, patience=0, budget=budget, rewrite=RewriteSettings(hard_k=2, n_variants=2))
    return PMPO(tiny_lm, config, Scorer(tiny_lm), rewriter=rewriter).optimize(PROMPT, _train()), rewriter


def test_no_budget_runs_every_iteration(tiny_lm):
    result, _ = _run(tiny_lm, BudgetSettings())
    assert result.stop_reason == "iterations" and len(result.iterations) == 3


def test_a_spent_budget_stops_after_the_initial_scoring_with_the_initial_prompt(tiny_lm):
    result, rewriter = _run(tiny_lm, BudgetSettings(max_tokens=1))
    assert result.stop_reason == "budget" and not result.stopped_early
    assert result.iterations == () and result.best == result.initial and rewriter.requests == 0
    assert result.cost.usage.tokens_scored == result.initial_cost.usage.tokens_scored > 0


def test_a_budget_spent_by_the_masking_stops_before_the_rewrites_and_counts_the_masking(tiny_lm):
    initial = scoring_work(tiny_lm, PROMPT, _train().examples, Layout.of(ScorerSettings(), "cpu"), "preference")
    result, rewriter = _run(tiny_lm, BudgetSettings(max_tokens=initial.tokens_scored + 1))
    assert result.stop_reason == "budget" and result.iterations == ()
    assert rewriter.requests == 0  # the boundary after the masking: no rewrite request was sent
    assert result.unfinished_cost.mask.calls == 1 and result.unfinished_cost.mask.usage.tokens_scored > 0
    assert result.cost.usage.tokens_scored == initial.tokens_scored + result.unfinished_cost.usage.tokens_scored


def test_max_seconds_stops_the_same_way(tiny_lm):
    result, _ = _run(tiny_lm, BudgetSettings(max_seconds=1e-9))
    assert result.stop_reason == "budget" and result.iterations == ()
