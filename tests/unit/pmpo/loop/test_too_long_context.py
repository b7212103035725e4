"""One bad candidate never sinks a run: a rewrite that makes a training example too long for the model's context
is rejected under its own reason before it is scored, and the run goes on (tiny random model, context 512)."""

from __future__ import annotations

import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.errors import ContextLengthError
from pmpo.loop.optimizer import PMPO, OptimizerConfig
from pmpo.loop.steps import TOO_LONG_CONTEXT, LocalSteps, rewrite_prompts
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.context_budget import check_fits
from pmpo.scoring.loss import Scorer
from support.rewriters import ScriptedRewriter

PROMPT = "Classify the review."
SHORT = "Say positive or negative."
LONG = "Read every word of the review. " * 40  # about 280 tokens more than the prompt it replaces


def _fixed(seed: int, n: int) -> list[str]:
    """The same two replies to every request: one that fits, one far too long."""
    return [SHORT, LONG][:n]


def _near_the_limit(tiny_lm) -> Dataset:
    """Examples whose input leaves the prompt about 100 tokens of the context."""
    limit = tiny_lm.context_length
    words = 1
    while len(tiny_lm.tokenizer.encode("word " * (words + 10))) < limit - 100:
        words += 10
    text = "word " * words
    return Dataset("long", (Supervised(f"{text} (a)", "positive"), Supervised(f"{text} (b)", "negative")))


def test_a_rewrite_too_long_for_the_context_is_rejected_before_it_is_scored(tiny_lm):
    train = _near_the_limit(tiny_lm)
    check_fits(tiny_lm, PROMPT, train)  # the incumbent fits; scored, the long variant would fail the run
    with pytest.raises(ContextLengthError):
        check_fits(tiny_lm, LONG, train)
    settings = RewriteSettings(template="short", n_variants=2)
    variants, rejected = rewrite_prompts(
        ScriptedRewriter(_fixed, "fixed", n_params=None),
        PROMPT,
        train,
        [0],
        (),
        settings,
        1,
        frozenset({PROMPT}),
        Scorer(tiny_lm),
        seed=0,
    )
    assert variants == [SHORT]
    assert rejected[TOO_LONG_CONTEXT] == 1 and rejected["too_long"] == 0  # not the reply parser's reason


def test_the_run_goes_on_and_records_the_rejection(tiny_lm):
    train = _near_the_limit(tiny_lm)
    config = OptimizerConfig(iterations=1, rewrite=RewriteSettings(template="short", n_variants=2), masking=False)
    steps = LocalSteps(tiny_lm, config, rewriter=ScriptedRewriter(_fixed, "fixed", n_params=None))
    result = PMPO(config=config, steps=steps).optimize(PROMPT, train)
    [iteration] = result.iterations
    assert iteration.rejected[TOO_LONG_CONTEXT] >= 1
    assert LONG.strip() not in {c.prompt.strip() for c in result.candidates}
    assert SHORT in {c.prompt for c in result.candidates}  # the one that fits was scored
