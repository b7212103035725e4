"""Racing: drops clearly worse candidates early, keeps the best, and reports full-set losses of survivors."""

import numpy as np
import pytest
from pydantic import ValidationError

from pmpo.data.examples import Dataset, Supervised
from pmpo.errors import PmpoError
from pmpo.loop.optimizer import PMPO, OptimizerConfig
from pmpo.loop.result import Candidate
from pmpo.loop.selection import select
from pmpo.scoring.loss import LossMatrix, Scorer
from pmpo.scoring.racing import RacingSettings, race, race_losses, race_prompts, slice_order

ON = RacingSettings(enabled=True, first_slice=10, margin=3.0)


def matrix_source(matrix):
    """A SliceLosses over a fixed matrix that records how many examples each candidate was scored on."""
    scored = np.zeros(matrix.shape[0], dtype=int)

    def losses(candidates, n):
        scored[list(candidates)] = np.maximum(scored[list(candidates)], n)
        return matrix[list(candidates), :n]

    return losses, scored


def constructed(n_examples=50, seed=0):
    """Per-example losses that share the example's difficulty: rows 0-2 close, rows 3-5 clearly worse."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(2.0, 2.0, n_examples)  # some examples are hard under every prompt
    offsets = np.array([0.0, 0.05, 0.1, 2.0, 3.0, 5.0])
    return difficulty + offsets[:, None] + rng.normal(0, 0.3, (len(offsets), n_examples))


def test_drops_clearly_worse_candidates_and_scores_less():
    matrix = constructed()
    losses, scored = matrix_source(matrix)
    result = race_losses(losses, len(matrix), matrix.shape[1], ON)
    assert [r is None for r in result] == [False, False, False, True, True, True]
    assert scored[3:].max() < matrix.shape[1]  # the dropped ones never saw the whole set
    assert scored.sum() < 0.7 * matrix.size


@pytest.mark.parametrize("seed", range(5))
def test_never_drops_the_best_even_when_its_first_slice_is_unlucky(seed):
    matrix = constructed(seed=seed)
    matrix[0, :10] += 1.0  # the best candidate looks worse than rows 1-2 on the first slice
    best = int(np.argmin(matrix.mean(axis=1)))
    losses, _ = matrix_source(matrix)
    result = race_losses(losses, len(matrix), matrix.shape[1], ON)
    assert result[best] == pytest.approx(matrix[best].mean())
    survivors = {i: v for i, v in enumerate(result) if v is not None}
    assert min(survivors, key=survivors.get) == best


@pytest.mark.parametrize("field,value", [("first_slice", 1), ("growth", 1.0), ("margin", -1.0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        RacingSettings(**{field: value})


def test_disabled_scores_everything_once():
    matrix = constructed()
    losses, scored = matrix_source(matrix)
    result = race_losses(losses, len(matrix), matrix.shape[1], RacingSettings())
    np.testing.assert_allclose(result, matrix.mean(axis=1))
    assert (scored == matrix.shape[1]).all()


def test_always_keep_protects_the_incumbent():
    matrix = constructed()
    losses, _ = matrix_source(matrix)
    result = race_losses(losses, len(matrix), matrix.shape[1], ON, always_keep=5)
    assert result[5] == pytest.approx(matrix[5].mean())


@pytest.mark.parametrize("margin", [float("inf"), 0.0])
def test_race_with_the_scorer_returns_plain_full_set_losses(tiny_lm, margin):
    examples = [Supervised(f"Review {i}: {'great' if i % 2 else 'awful'} item {i}.", "positive") for i in range(24)]
    prompts = ["Say positive.", "Classify the review.", "Write a poem about the ocean and the sky."]
    settings = RacingSettings(enabled=True, first_slice=6, margin=margin)
    order = slice_order(len(examples), seed=0, iteration=1)
    raced = race(Scorer(tiny_lm), prompts, examples, settings, incumbent="Answer positive or negative.", order=order)
    plain = Scorer(tiny_lm).loss_matrix(prompts, examples).prompt_loss()
    assert len(raced) == len(prompts)
    for value, expected in zip(raced, plain):
        assert value is None or value == pytest.approx(expected, rel=1e-5)  # fp32, batched differently
    survivors = sum(v is not None for v in raced)
    # No margin: only the leader of the last round (a prompt, or the incumbent) is left; infinite: all are.
    assert survivors == len(prompts) if margin == float("inf") else survivors <= 1


class TableSteps:
    """PMPO steps over fixed per-example losses, so racing's effect on the loop is exact and checkable."""

    model_identity = "table"

    def __init__(self, table: dict[str, np.ndarray], proposals: list[str]):
        self.table, self.proposals = table, proposals
        self.scored: set[tuple[str, int]] = set()  # like the Scorer's memo: a pair costs once
        self.slices: list[Dataset] = []  # every set of examples scored, in call order

    def losses(self, prompts, train, iteration):
        at = [int(e.input[1:]) for e in train.examples]  # example "x17" is row 17 of the table
        self.slices.append(train)
        self.scored |= {(p, i) for p in prompts for i in at}
        loss = np.stack([self.table[p][at] for p in prompts])
        return LossMatrix(loss, loss, np.ones(loss.shape, dtype=np.int64))

    def segments(self, prompt, prompt_loss, train, iteration):
        return [prompt], ()

    def rewrites(self, incumbent, train, hard, effects, iteration, seen):
        return [p for p in self.proposals if p not in seen], {}

    def select(self, incumbent, candidates, iteration):
        return select(incumbent, candidates)


def run_loop(racing: RacingSettings, iterations: int = 1, labels=("y",)):
    matrix = constructed()  # rows 0-2 close, 3-5 clearly worse
    table = {"start": matrix[0] + 0.5} | {f"variant {i}": row for i, row in enumerate(matrix)}
    steps = TableSteps(table, [f"variant {i}" for i in range(len(matrix))])
    n = matrix.shape[1]
    # `labels` split the examples into contiguous blocks: a file sorted by label
    train = Dataset("t", tuple(Supervised(f"x{i}", labels[i * len(labels) // n]) for i in range(n)))
    config = OptimizerConfig(iterations=iterations, racing=racing, seed=7)
    result = PMPO(config=config, steps=steps).optimize("start", train)
    return result, len(steps.scored), steps


def test_racing_in_the_loop_records_dropped_candidates_and_keeps_the_pick():
    full, full_pairs, _ = run_loop(RacingSettings())
    raced, raced_pairs, _ = run_loop(ON)
    assert raced.best.prompt == full.best.prompt == "variant 0"
    assert raced.best.loss == pytest.approx(full.best.loss) and raced.best.n_examples == 50
    dropped = {c.prompt: c for c in raced.candidates if c.dropped}
    assert set(dropped) == {"variant 3", "variant 4", "variant 5"}
    assert all(c.n_examples == ON.first_slice for c in dropped.values())  # recorded with the slice they lost on
    assert raced.iterations[0].n_dropped == 3 and full.iterations[0].n_dropped == 0
    assert len(raced.candidates) == len(full.candidates)  # every candidate is kept, dropped or not
    assert raced_pairs < full_pairs


def test_a_dropped_candidate_is_never_selected_even_with_a_lower_slice_loss():
    incumbent = Candidate("a", None, 0, "initial", "start", 5.0, 1.0, 50)
    early = Candidate("b", "a", 1, "rewrite", "lucky", 1.0, 0.2, 10, dropped=True)
    assert select(incumbent, [early]) is incumbent


def test_first_slice_of_a_label_sorted_set_holds_both_labels_and_survivors_keep_their_losses():
    full, _, _ = run_loop(RacingSettings(), iterations=2, labels=("negative", "positive"))
    raced, _, steps = run_loop(ON, iterations=2, labels=("negative", "positive"))
    first = next(d for d in steps.slices if len(d) == ON.first_slice)
    assert {e.target for e in first.examples} == {"negative", "positive"}  # the file's first 10 are all negative
    assert [e.input for e in first.examples] != [f"x{i}" for i in range(ON.first_slice)]
    whole = [d for d in steps.slices if len(d) == 50]
    assert whole and all([e.input for e in d.examples] == [f"x{i}" for i in range(50)] for d in whole)
    plain = {c.prompt: c.loss for c in full.candidates}
    survivors = [c for c in raced.candidates if not c.dropped]
    assert len(survivors) > 1 and all(c.loss == pytest.approx(plain[c.prompt], abs=1e-12) for c in survivors)
    # hard examples come from full rows in the dataset's order, so racing leaves them as they were
    assert [it.hard_examples for it in raced.iterations] == [it.hard_examples for it in full.iterations]


def test_slice_order_is_seeded_by_run_and_iteration():
    assert slice_order(30, seed=1, iteration=2) == slice_order(30, seed=1, iteration=2)
    assert sorted(slice_order(30, seed=1, iteration=2)) == list(range(30))
    assert slice_order(30, seed=1, iteration=2) != slice_order(30, seed=1, iteration=3)
    assert slice_order(30, seed=1, iteration=2) != slice_order(30, seed=2, iteration=2)
    with pytest.raises(PmpoError, match="permutation"):
        race_prompts(lambda ps, idx: None, ["p"], 3, ON, order=[0, 0, 1])
