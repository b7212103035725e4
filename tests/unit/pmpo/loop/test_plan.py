"""The cost plan's arithmetic against the usage counters of real runs on the tiny random model: the scorer's passes
and tokens exactly, a whole run's tokens within 10%, a rewrite request's prefill and its budget."""

import pytest

from pmpo.data import load_dataset, split_dataset
from pmpo.data.examples import Dataset, MultipleChoice
from pmpo.loop.keep_rate import KeepRate
from pmpo.loop.optimizer import PMPO
from pmpo.loop.plan import Layout, Rates, cost_plan, scoring_work
from pmpo.loop.settings import OptimizerConfig, SelectionSettings
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.loss import Scorer
from pmpo.scoring.settings import ScorerSettings
from support.rewriters import ScriptedRewriter

PROMPT = "Read the review.\nAnswer with one word: positive or negative."


def _train(n: int = 8) -> Dataset:
    return split_dataset(load_dataset("builtin:sentiment", limit=40), seed=0, train_fraction=1.0, train_cap=n).train


def _scored(lm, settings, prompt, examples):
    before = lm.usage.snapshot()
    Scorer(lm, settings).loss_matrix([prompt], examples)
    return lm.usage.snapshot() - before


@pytest.mark.parametrize(
    "settings",
    [
        ScorerSettings(),
        ScorerSettings(reuse_prefix=False),
        ScorerSettings(prefix_attention="expand", token_budget=256),
        ScorerSettings(token_budget=64),
        ScorerSettings(share_inputs=False),
    ],
)
def test_scoring_work_is_what_the_scorer_runs(tiny_lm, settings):
    examples = _train().examples
    mc = (MultipleChoice("Is 2 + 2 four?", ("yes", "no", "maybe"), "yes"),)
    for data in (examples, examples + mc):
        planned = scoring_work(tiny_lm, PROMPT, data, Layout.of(settings, "cpu"), settings.mc_objective)
        actual = _scored(tiny_lm, settings, PROMPT, data)
        assert (planned.forward_passes, planned.tokens_scored) == (actual.forward_passes, actual.tokens_scored)


def _variants(seed: int, n: int) -> list[str]:
    """n distinct variants shaped as the prompt, every one kept: one line (the SHORT form's reply ends at a
    newline) of two sentences, two units, as the prompt has."""
    return [f"Read the review {seed % 997} {i}. Answer with one word: positive or negative." for i in range(n)]


def test_the_plan_of_a_run_is_within_ten_percent_of_its_usage(tiny_lm):
    train = _train()
    # gate 0: any strictly lower loss is taken, so the incumbent changes often and its masking is new work
    config = OptimizerConfig(
        iterations=3,
        patience=0,
        segment_removal=False,  # a removal leaves one unit: the next masking would have nothing to measure
        selection=SelectionSettings(gate_z=0.0),
        rewrite=RewriteSettings(hard_k=2, n_variants=3),
    )
    settings = ScorerSettings()
    result = PMPO(
        tiny_lm, config, Scorer(tiny_lm, settings), rewriter=ScriptedRewriter(_variants, "variants")
    ).optimize(PROMPT, train)
    assert len(result.iterations) == 3 and all(it.n_candidates >= 6 for it in result.iterations)

    plan = cost_plan(
        tiny_lm, PROMPT, train, config, layout=Layout.of(settings, "cpu"), rewriter_params=1, local_rewriter=False
    )
    actual = result.cost.usage
    assert plan.work.tokens_scored >= actual.tokens_scored  # a maximum
    # The plan masks a new incumbent every iteration; after an iteration that kept its incumbent the scorer's
    # memo answers the masking, so that iteration's masking is the one thing to take off the maximum.
    kept = sum(not it.improved for it in result.iterations[:-1])
    mask = next(s for s in plan.steps if s.step == "mask").each
    assert plan.work.tokens_scored - kept * mask.tokens_scored == pytest.approx(actual.tokens_scored, rel=0.10)
    assert plan.work.forward_passes - kept * mask.forward_passes == pytest.approx(actual.forward_passes, rel=0.10)
    assert plan.step_work("loss").tokens_scored == pytest.approx(result.cost.loss.usage.tokens_scored, rel=0.10)
    first = result.initial_cost.usage  # the initial prompt: counted exactly
    assert plan.steps[0].work.tokens_scored == first.tokens_scored
    assert plan.work.requests == 3 * 2  # k chat requests an iteration


def test_a_rewrite_requests_prefill_and_budget_match_the_model_as_its_own_rewriter(tiny_lm):
    train = _train()
    config = OptimizerConfig(iterations=1, rewrite=RewriteSettings(hard_k=2, n_variants=2, max_new_tokens=16))
    result = PMPO(tiny_lm, config).optimize(PROMPT, train)
    plan = cost_plan(tiny_lm, PROMPT, train, config, layout=Layout.of(ScorerSettings(), "cpu"), rewriter_params=1)

    rewrite, planned = result.cost.rewrite.usage, plan.step_work("rewrite")
    assert planned.tokens_prefilled == pytest.approx(rewrite.tokens_prefilled, rel=0.10)
    assert 0 < rewrite.tokens_generated <= planned.tokens_generated  # the budget is the most a reply may run to
    assert rewrite.forward_passes <= planned.forward_passes


def test_seconds_come_from_the_rates_step_by_step(tiny_lm):
    train, config = _train(), OptimizerConfig(iterations=2)
    keep = KeepRate(kept=3, replies=8)  # an expected share of 0.4
    rates = Rates(scored_token_s=1e-3, rewrite_request_s=2.0, decode_step_s=0.01, reply_fraction=0.25, keep=keep)
    plan = cost_plan(tiny_lm, PROMPT, train, config, layout=Layout.of(ScorerSettings(), "cpu"), rates=rates)

    rewrite = next(s for s in plan.steps if s.step == "rewrite")
    assert plan.seconds(rewrite) == pytest.approx(2 * config.rewrite.hard_k * 2.0)
    initial = plan.steps[0]
    assert plan.seconds(initial) == pytest.approx(initial.work.tokens_scored * 1e-3)
    assert plan.total_seconds == pytest.approx(sum(plan.seconds(s) for s in plan.steps))
    assert plan.expected(rewrite).tokens_generated == round(rewrite.work.tokens_generated * 0.25)
    assert plan.expected(rewrite).tokens_prefilled == rewrite.work.tokens_prefilled  # every request is sent
    candidates = next(s for s in plan.steps if s.kind == "candidates")
    assert plan.expected(candidates).tokens_scored == round(candidates.work.tokens_scored * 0.4)
    assert plan.seconds(candidates) == pytest.approx(candidates.work.tokens_scored * 1e-3 * 0.4)
    assert [s.runs for s in plan.steps if s.step != "loss"] == [2, 2]  # mask and rewrite: once an iteration


@pytest.mark.parametrize("keep", [KeepRate(kept=3, replies=8), KeepRate(kept=8, replies=8), KeepRate(0, 4)])
def test_the_expected_tokens_and_their_range_stay_under_the_maximum(tiny_lm, keep):
    train, config = _train(), OptimizerConfig(iterations=3, rewrite=RewriteSettings(hard_k=2, n_variants=4))
    rates = Rates(scored_token_s=1e-3, rewrite_request_s=2.0, decode_step_s=0.01, keep=keep)
    plan = cost_plan(tiny_lm, PROMPT, train, config, layout=Layout.of(ScorerSettings(), "cpu"), rates=rates)

    slots = 3 * 2 * 4
    count, tokens = plan.expected_candidates, plan.expected_tokens
    assert count == keep.candidates(slots)
    candidates = next(s for s in plan.steps if s.kind == "candidates").work.tokens
    assert tokens.mean == plan.expected_work.tokens
    # The range moves only the candidates' scoring, by the candidates the count's range adds or takes off.
    assert tokens.high - tokens.mean == pytest.approx(candidates * (count.high - count.mean) / slots)
    assert tokens.low <= tokens.mean <= tokens.high <= plan.work.tokens  # the maximum: every reply kept


def test_without_calibration_every_reply_is_expected_kept(tiny_lm):
    train, config = _train(), OptimizerConfig(iterations=2)
    plan = cost_plan(tiny_lm, PROMPT, train, config, layout=Layout.of(ScorerSettings(), "cpu"))
    slots = 2 * config.rewrite.hard_k * config.rewrite.n_variants
    assert (plan.expected_candidates.low, plan.expected_candidates.high) == (slots, slots)
    assert plan.expected_tokens.mean == plan.expected_tokens.high == plan.work.tokens
