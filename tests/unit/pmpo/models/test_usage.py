"""Cost counters: exact token and pass counts of scoring and generation, and per-iteration costs that add up."""

import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.loop.optimizer import PMPO, OptimizerConfig
from pmpo.models.generation import greedy, stop_token_ids
from pmpo.models.usage import STEPS, Cost, Meter, StepCost, Usage, UsageSnapshot, produced_tokens, total
from pmpo.rewriting.proposal import RewriteSettings
from pmpo.scoring.loss import Scorer, ScorerSettings
from pmpo.text.rendering import chat_request, render

EXAMPLES = [
    Supervised("Review: great phone.", "positive"),
    Supervised("Review: it broke on the first day.", "negative"),
    Supervised("Review: fine.", "a longer reference output that spans several tokens"),
]
PROMPT = "Classify the sentiment of the review."


def test_snapshots_subtract_and_add_field_by_field():
    usage = Usage()
    before = usage.snapshot()
    usage.scored(10)
    usage.scored(5)
    usage.generated(7, passes=3, prefilled=40)
    delta = usage.snapshot() - before
    assert delta == UsageSnapshot(forward_passes=5, tokens_scored=15, tokens_generated=7, tokens_prefilled=40)
    assert delta + delta == UsageSnapshot(10, 30, 14, 80)
    assert before == UsageSnapshot()  # a snapshot is frozen: later counting leaves it alone


def test_produced_tokens_stop_at_the_first_stop_token_and_skip_trailing_padding():
    stops, pad = {2}, 0
    rows = [
        [5, 6, 2, 0, 0],  # ended by a stop token: 3 produced (the stop token is a decoding step too)
        [5, 6, 7, 8, 9],  # ran to max_new_tokens: 5
        [5, 6, 0, 0, 0],  # ended by a stopping criterion, padded after: 2
    ]
    assert produced_tokens(rows, stops, pad) == 3 + 5 + 2


def _sequence_length(lm, example):
    """Tokens of one whole (prompt, input, reference) sequence, tokenised independently of the scorer."""
    text = render(lm.tokenizer, lm.placement, PROMPT, example.input).text + example.target
    return len(lm.tokenizer(text)["input_ids"])


def test_scorer_counts_each_token_it_runs_and_one_pass_per_batch(tiny_lm):
    # One sequence per batch (budget 1) and no prefix reuse: no padding, every sequence is fed whole
    # except its last token, which predicts nothing scored.
    scorer = Scorer(tiny_lm, ScorerSettings(token_budget=1, reuse_prefix=False))
    before = tiny_lm.usage.snapshot()
    scorer.loss_matrix([PROMPT], EXAMPLES)
    spent = tiny_lm.usage.snapshot() - before
    expected = sum(_sequence_length(tiny_lm, e) - 1 for e in EXAMPLES)
    assert spent == UsageSnapshot(forward_passes=len(EXAMPLES), tokens_scored=expected, tokens_generated=0)
    again = tiny_lm.usage.snapshot()
    scorer.loss_matrix([PROMPT], EXAMPLES)  # memoised: nothing runs, nothing is counted
    assert tiny_lm.usage.snapshot() == again


def test_scorer_with_a_reused_prefix_counts_the_prefix_pass_once(tiny_lm):
    scorer = Scorer(tiny_lm, ScorerSettings(token_budget=1, prefix_attention="expand"))
    before = tiny_lm.usage.snapshot()
    scorer.loss_matrix([PROMPT], EXAMPLES)
    spent = tiny_lm.usage.snapshot() - before
    assert spent.forward_passes == 1 + len(EXAMPLES)  # the prefix KV pass, then one pass per sequence
    assert spent.tokens_scored == scorer.tokens_computed
    no_reuse = sum(_sequence_length(tiny_lm, e) - 1 for e in EXAMPLES)
    prefix = len(tiny_lm.tokenizer(render(tiny_lm.tokenizer, tiny_lm.placement, PROMPT, "").prefix)["input_ids"])
    assert spent.tokens_scored == no_reuse - (len(EXAMPLES) - 1) * prefix  # the prefix is run once, not 3 times


def test_greedy_counts_new_tokens_per_row_and_one_pass_per_decoding_step(tiny_lm):
    k = 6
    texts = [chat_request(tiny_lm.tokenizer, m) for m in ("Say a word.", "Name a colour.", "Count to three.")]
    stops = set(stop_token_ids(tiny_lm))
    before = tiny_lm.usage.snapshot()
    outputs = greedy(tiny_lm, texts, max_new_tokens=k, batch_size=2)  # two generate calls: 2 rows, then 1
    spent = tiny_lm.usage.snapshot() - before
    # The random model emits no stop token in these k steps (checked: each output decodes k tokens' worth).
    reencoded = [tiny_lm.tokenizer.encode(o, add_special_tokens=False) for o in outputs]
    assert all(not stops & set(ids) for ids in reencoded)
    # Prefill: each generate call reads its rows left-padded to the longest (texts sorted by length).
    lengths = sorted(len(tiny_lm.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    prefilled = 2 * lengths[1] + lengths[2]
    assert spent == UsageSnapshot(2 * k, tokens_scored=0, tokens_generated=len(texts) * k, tokens_prefilled=prefilled)


def test_meter_charges_each_step_its_time_and_usage():
    usage = Usage()
    meter = Meter(usage.snapshot)
    with meter.step("loss"):
        usage.scored(100)
    with meter.step("rewrite"):
        usage.generated(20, passes=20)
    with meter.step("loss"):
        usage.scored(50)
    cost = meter.take()
    assert cost.loss.usage == UsageSnapshot(2, 150, 0) and cost.loss.calls == 2
    assert cost.rewrite.usage == UsageSnapshot(20, 0, 20)
    assert cost.usage == UsageSnapshot(22, 150, 20)
    assert cost.seconds == pytest.approx(sum(cost.step(s).seconds for s in STEPS)) and cost.seconds > 0
    assert meter.take() == Cost()  # taken: the meter starts afresh
    with pytest.raises(ValueError, match="unknown step"):
        with meter.step("train"):
            pass


def test_costs_add_step_by_step():
    a = Cost(loss=StepCost(1.0, UsageSnapshot(1, 10, 0), 1))
    b = Cost(loss=StepCost(2.0, UsageSnapshot(2, 20, 0), 1), rewrite=StepCost(0.5, UsageSnapshot(3, 0, 30), 1))
    assert total([a, b]) == Cost(loss=StepCost(3.0, UsageSnapshot(3, 30, 0), 2), rewrite=b.rewrite)


def test_optimisation_iteration_costs_add_up_to_the_run_total(tiny_lm):
    train = Dataset(name="t", examples=tuple(EXAMPLES), description="sentiment")
    config = OptimizerConfig(iterations=2, rewrite=RewriteSettings(hard_k=1, n_variants=2, max_new_tokens=8))
    before = tiny_lm.usage.snapshot()
    result = PMPO(tiny_lm, config, Scorer(tiny_lm)).optimize(PROMPT + " Answer with one word.", train)
    spent = tiny_lm.usage.snapshot() - before
    assert result.cost == result.initial_cost + total([it.cost for it in result.iterations])
    assert result.cost.usage == spent  # every forward pass of the run is charged to some step
    assert result.initial_cost.loss.usage.tokens_scored > 0 and result.initial_cost.usage.tokens_generated == 0
    first, second = result.iterations
    assert first.cost.mask.usage.tokens_scored > 0  # two units: each masked prompt is scored
    if not first.improved:  # same incumbent: its masked prompts are in the scorer's memo, nothing runs
        assert second.cost.mask.usage == UsageSnapshot()
    for it in result.iterations:
        assert it.cost.rewrite.usage.tokens_generated > 0
        assert it.cost.select.calls == 1 and it.cost.rewrite.calls == 1
        assert it.cost.seconds > 0
