"""Tests of the method itself, on the real bundled SmolLM2-135M-Instruct (the tiny random model has no signal)."""

import numpy as np
import pytest

from pmpo.data import demo_task, split_dataset
from pmpo.loop.optimizer import PMPO, OptimizerConfig
from pmpo.scoring.balance import label_weights
from pmpo.scoring.loss import Scorer
from pmpo.scoring.reference import naive_nll

pytestmark = pytest.mark.real_model

FITTING = "Classify the sentiment of the product review. Answer with one word: positive or negative."
UNRELATED = "Translate the text into French."


def test_fitting_instruction_has_lower_loss_than_unrelated_one(real_lm):
    examples = demo_task(30, seed=1).examples
    losses = Scorer(real_lm).loss_matrix([FITTING, UNRELATED], examples).loss  # [2, 30]
    assert losses[0].mean() < losses[1].mean() - 3.0  # nats per example: a wide, not a marginal, gap
    assert (losses[0] < losses[1]).mean() > 0.8  # and on most examples, not on average only


def test_batched_loss_equals_per_example_fp32(real_lm):
    examples = demo_task(12, seed=2).examples
    prompts = [FITTING, "Read the text.\nThen think about it.", ""]
    matrix = Scorer(real_lm).loss_matrix(prompts, examples)
    naive = np.array([[naive_nll(real_lm, p, e.input, e.target)[0] for e in examples] for p in prompts])
    np.testing.assert_allclose(matrix.loss, naive, rtol=1e-3)


def test_two_iterations_lower_train_loss_and_keep_every_candidate(real_lm):
    split = split_dataset(demo_task(60, seed=3), seed=3)  # 12 training examples
    seen, iterations = [], []
    scorer = Scorer(real_lm)
    optimizer = PMPO(
        real_lm, OptimizerConfig(iterations=2, seed=3), scorer, on_candidate=seen.append, on_iteration=iterations.append
    )
    result = optimizer.optimize("Read the text. Then answer.", split.train)

    # From a vague start, masking and rewrites find a strictly better prompt (the method works, not just runs).
    assert result.best.loss < result.initial.loss
    assert any(it.improved for it in result.iterations)
    assert [c.id for c in result.candidates] == [c.id for c in seen]  # every candidate scored is in the result
    assert len({c.id for c in result.candidates}) == len(result.candidates)
    assert len(result.iterations) == 2 and result.iterations == tuple(iterations)
    assert sum(it.n_candidates for it in result.iterations) == len(result.candidates) - 1
    # The stored losses are the real losses of those prompts on the training set (each label weighed the same).
    matrix = Scorer(real_lm).loss_matrix([c.prompt for c in result.candidates], split.train.examples)
    weights = label_weights(split.train.examples) if optimizer.config.balance_labels else None
    fresh = matrix.weighted(weights).prompt_loss()
    np.testing.assert_allclose([c.loss for c in result.candidates], fresh, rtol=1e-6)
    # The incumbent only ever goes down, and only by a strictly lower loss.
    history = [result.initial.loss] + [it.incumbent_loss for it in result.iterations]
    assert all(b <= a for a, b in zip(history, history[1:]))
    assert all(it.improved == (it.incumbent_loss < before) for it, before in zip(result.iterations, history))
    assert result.best.loss == min(c.loss for c in result.candidates)
