"""Demonstrations chosen by loss, on the tiny random model: the demonstrated examples are not in the scored rows, the
gate pairs on the examples both prompts were scored on, the sets follow the seed, and the setting off adds nothing."""

import numpy as np
import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.loop.demonstrations import demonstration_prompts, demonstration_sets
from pmpo.loop.optimizer import PMPO
from pmpo.loop.result import Candidate
from pmpo.loop.selection import candidates_from, select
from pmpo.loop.settings import DemonstrationSettings, OptimizerConfig, SelectionSettings
from pmpo.scoring.loss import Scorer
from pmpo.text.demonstrations import shown, with_demonstrations
from support.scorers import RecordingScorer

LABELS = ["positive", "negative"]
TRAIN = Dataset(
    "reviews",
    tuple(Supervised(f"Review {i}: it {'works' if i % 2 else 'broke'}.", LABELS[i % 2 == 0]) for i in range(8)),
)
PROMPT = "Label the review: positive or negative."


def test_the_examples_a_prompt_shows_are_left_out_of_its_scored_row(tiny_lm):
    demos = with_demonstrations(PROMPT, [TRAIN.examples[1], TRAIN.examples[4]])
    matrix = Scorer(tiny_lm).loss_matrix([PROMPT, demos], TRAIN.examples)
    assert not np.isnan(matrix.loss[0]).any()
    assert np.isnan(matrix.loss[1]).nonzero()[0].tolist() == [1, 4]  # never scored with itself in the prompt
    assert matrix.tokens[1, [1, 4]].tolist() == [0, 0] and matrix.n_scored().tolist() == [8, 6]
    assert matrix.prompt_loss()[1] == pytest.approx(np.delete(matrix.loss[1], [1, 4]).mean())
    # The paired gap compares the incumbent on the same six examples, not its mean over all eight.
    [c] = candidates_from(
        matrix.row(1), [demos], ["demonstrations"], parent_id="p", iteration=1, reference=matrix.row(0)
    )
    assert c.n_examples == 6
    assert c.gap == pytest.approx(np.delete(matrix.loss[1] - matrix.loss[0], [1, 4]).mean())


def _candidate(cid, loss, n, gap=None, se=0.0):
    return Candidate(cid, None, 1, "demonstrations", cid, loss, loss, n, gap=gap, gap_se=se)


def test_the_gate_judges_a_demonstration_candidate_by_its_paired_gap_not_by_means_over_other_examples():
    incumbent = _candidate("inc", 1.0, 8)
    # Lower mean (its own easy examples left out) but no better on the shared ones: refused.
    assert select(incumbent, [_candidate("d", 0.5, 6, gap=0.1, se=0.01)], SelectionSettings()) is incumbent
    better = _candidate("e", 1.2, 6, gap=-0.5, se=0.1)
    assert select(incumbent, [better], SelectionSettings()) is better


def test_the_sets_follow_the_seed_take_low_loss_examples_and_alternate_the_labels():
    losses = [0.1 * i for i in range(8)]
    first = demonstration_sets(losses, TRAIN, 2, 3, seed=0, iteration=1)
    assert first == demonstration_sets(losses, TRAIN, 2, 3, seed=0, iteration=1)
    assert first[0] == (0, 1)  # the lowest-loss example of each label
    assert all({TRAIN.examples[i].target for i in s} == set(LABELS) for s in first)
    assert all(losses[i] <= np.median(losses) for s in first for i in s)
    draws = {tuple(demonstration_sets(losses, TRAIN, 2, 3, seed=s, iteration=1)[1:]) for s in range(6)}
    assert len(draws) > 1  # another seed, another draw
    assert demonstration_sets([np.nan, *losses[1:]], TRAIN, 2, 1, seed=0, iteration=1)[0] == (
        1,
        2,
    )  # a NaN (shown) is never chosen


def test_demonstration_prompts_keep_seen_prompts_out_and_add_none_to_a_prompt_that_has_them(tiny_lm):
    settings = DemonstrationSettings(k=2, sets=2)
    losses = [0.1 * i for i in range(8)]
    prompts, _ = demonstration_prompts(tiny_lm, PROMPT, TRAIN, losses, settings, 1, frozenset(), seed=0)
    assert len(prompts) == 2 and all(len(shown(p, TRAIN.examples)) == 2 for p in prompts)
    again, _ = demonstration_prompts(tiny_lm, PROMPT, TRAIN, losses, settings, 1, frozenset(prompts[:1]), seed=0)
    assert again == prompts[1:]
    assert demonstration_prompts(tiny_lm, prompts[0], TRAIN, losses, settings, 2, frozenset(), seed=0) == ([], {})


def _run(tiny_lm, k):
    config = OptimizerConfig(iterations=1, masking=False, demonstrations=DemonstrationSettings(k=k, sets=2))
    config = config.model_copy(update={"rewrite": config.rewrite.model_copy(update={"hard_k": 0})})
    scorer = RecordingScorer(tiny_lm)
    return PMPO(tiny_lm, config, scorer).optimize(PROMPT, TRAIN), scorer


def test_in_the_loop_the_candidates_are_recorded_as_demonstrations_and_off_adds_no_pass(tiny_lm):
    result, scorer = _run(tiny_lm, 2)
    demos = [c for c in result.candidates if c.origin == "demonstrations"]
    assert len(demos) == 2 and all(c.n_examples == 6 and c.gap is not None for c in demos)
    assert result.iterations[0].n_candidates == 2
    off, off_scorer = _run(tiny_lm, 0)
    assert [c.origin for c in off.candidates] == ["initial"]
    assert off_scorer.prompts == [PROMPT]  # the initial prompt only: no demonstration was scored
