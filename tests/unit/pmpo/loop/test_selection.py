"""Selection with a noise floor: a gain must clear z paired standard errors (z = 0 is the paper's strict rule),
a multiple-choice candidate may not lose training hits, removals are proposed only past the noise, and
`patience` ends a search that accepts nothing. On synthetic per-example losses."""

from dataclasses import replace

import numpy as np
import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.loop.optimizer import PMPO
from pmpo.loop.result import Candidate
from pmpo.loop.selection import candidates_from, select
from pmpo.loop.settings import OptimizerConfig, SelectionSettings
from pmpo.loop.steps import removal_prompts
from pmpo.masking.analysis import masking_analysis
from pmpo.masking.units import segment
from pmpo.scoring.loss import LossMatrix, preference_loss
from pmpo.scoring.temperature import tempered

RNG = np.random.default_rng(0)
INCUMBENT_ROW = RNG.normal(10.0, 3.0, size=50)  # hard and easy examples: the spread racing pairs away
SWING = np.resize([1.0, -1.0], 50)  # +-1 per example, mean 0: a paired standard error of 1/sqrt(50) = 0.14
PAPER = SelectionSettings(gate_z=0.0, keep_accuracy=False)


def _matrix(rows, hits=None) -> LossMatrix:
    loss = np.atleast_2d(np.asarray(rows, dtype=float))
    return LossMatrix(loss, loss, np.ones(loss.shape, dtype=np.int64), None if hits is None else np.atleast_2d(hits))


def _incumbent(row=INCUMBENT_ROW, hits=None) -> Candidate:
    [c] = candidates_from(_matrix(row, hits), ["incumbent"], ["initial"], parent_id=None, iteration=0)
    return c


def _candidate(prompt: str, row, hits=None, reference=INCUMBENT_ROW) -> Candidate:
    [c] = candidates_from(
        _matrix(row, hits), [prompt], ["rewrite"], parent_id="inc", iteration=1, reference=_matrix(reference)
    )
    return c


def test_the_gate_accepts_a_clear_win_and_refuses_one_inside_the_noise():
    incumbent = _incumbent()
    clear = _candidate("clear", INCUMBENT_ROW - 0.5 + RNG.normal(0, 0.1, 50))  # every example lower
    noisy = _candidate("noisy", INCUMBENT_ROW - 0.05 + SWING)  # lower mean, inside the noise
    assert noisy.loss < incumbent.loss and noisy.loss - incumbent.loss + noisy.gap_se > 0
    assert select(incumbent, [noisy]) is incumbent  # default gate: z = 1
    assert select(incumbent, [noisy, clear]) is clear
    assert select(incumbent, [noisy], PAPER) is noisy  # the paper's rule keeps any lower mean
    assert clear.gap_se == pytest.approx(0.1 / np.sqrt(50), rel=0.3)  # racing's paired standard error


def test_z_zero_is_the_papers_strict_rule():
    rng = np.random.default_rng(3)
    for _ in range(200):
        incumbent = _incumbent()
        rows = INCUMBENT_ROW + rng.normal(0, 0.3, size=(4, 50)) + rng.normal(0, 0.05, size=(4, 1))
        cands = [_candidate(f"p{i}", row) for i, row in enumerate(rows)]
        best = min(cands, key=lambda c: (c.loss, c.id))
        paper = best if best.loss < incumbent.loss else incumbent
        assert select(incumbent, cands, PAPER) is paper
    same = _candidate("same", INCUMBENT_ROW)
    assert select(_incumbent(), [same], PAPER).prompt == "incumbent"  # a tie keeps the incumbent


def test_among_candidates_past_the_gate_the_lowest_loss_wins_ties_by_id():
    incumbent = _incumbent()
    a, b = _candidate("a", INCUMBENT_ROW - 1.0), _candidate("b", INCUMBENT_ROW - 1.0)
    assert a.gap_se == 0.0 and select(incumbent, [b, a]) is min([a, b], key=lambda c: c.id)
    assert select(incumbent, [_candidate("c", INCUMBENT_ROW - 2.0), a]).prompt == "c"


def test_a_multiple_choice_candidate_with_lower_loss_but_fewer_hits_is_refused():
    hits = np.ones(50)
    incumbent = _incumbent(hits=hits)
    fewer = hits.copy()
    fewer[:3] = 0.0
    cheaper = _candidate("indifferent", INCUMBENT_ROW - 1.0, hits=fewer)  # a clear loss win, 3 answers lost
    assert cheaper.accuracy == pytest.approx(47 / 50) and incumbent.accuracy == 1.0
    assert select(incumbent, [cheaper]) is incumbent
    assert select(incumbent, [cheaper], SelectionSettings(keep_accuracy=False)) is cheaper
    kept = _candidate("kept", INCUMBENT_ROW - 1.0, hits=hits)
    assert select(incumbent, [cheaper, kept]) is kept
    # Per byte (acc_norm) counts as well: the same hits in total but three lost per byte is refused.
    incumbent = replace(incumbent, accuracy_norm=1.0)
    per_byte = replace(kept, accuracy_norm=47 / 50)
    assert select(incumbent, [per_byte]) is incumbent
    assert select(incumbent, [per_byte], SelectionSettings(keep_accuracy=False)) is per_byte
    # Examples without ranked options (NaN) do not count; no MC example at all: no accuracy, loss decides.
    mixed = np.where(np.arange(50) < 25, np.nan, 1.0)
    assert _candidate("m", INCUMBENT_ROW, hits=mixed).accuracy == 1.0
    assert _candidate("n", INCUMBENT_ROW, hits=np.full(50, np.nan)).accuracy is None


def _preference_matrix(margins) -> LossMatrix:
    """A one-row matrix of single-pair preference examples with these margins (nll+ = 0, nll- = margin)."""
    pairs = [np.array([m]) for m in margins]
    loss = np.array([[preference_loss(0.0, m) for m in pairs]])
    return LossMatrix(loss, np.zeros_like(loss), np.ones(loss.shape, dtype=np.int64), tempered=tempered(pairs)[None])


def test_a_candidate_that_only_makes_the_model_less_sure_is_refused_by_the_tempered_gate():
    at_chance = RNG.normal(-0.1, 1.5, size=50)  # the model cannot do the task: wrong about half the time
    incumbent_matrix = _preference_matrix(at_chance)
    [incumbent] = candidates_from(incumbent_matrix, ["inc"], ["initial"], parent_id=None, iteration=0)

    def candidate(prompt, margins):
        [c] = candidates_from(
            _preference_matrix(margins), [prompt], ["rewrite"], parent_id="inc", iteration=1, reference=incumbent_matrix
        )
        return c

    shrunk = candidate("less sure", at_chance / 3)  # a clear plain win: every confidently wrong pair costs less
    assert shrunk.loss - incumbent.loss + shrunk.gap_se < -0.1
    assert select(incumbent, [shrunk]) is incumbent
    assert select(incumbent, [shrunk], SelectionSettings(tempered_gate=False)) is shrunk
    better = candidate("better", at_chance + 1.5)  # ranks the answers better: passes both
    assert better.tempered_gap < 0 and select(incumbent, [shrunk, better]) is better
    # A matrix from an older cached result has no tempered losses: the plain gate decides.
    older = replace(shrunk, tempered_gap=None, tempered_gap_se=None)
    assert select(incumbent, [older]) is older


def test_where_nothing_was_softened_the_tempered_gap_is_not_recorded():
    sure = RNG.normal(3.0, 1.0, size=50)  # margins that point the right way: t = 1, the loss as scored
    reference = _preference_matrix(sure)
    [c] = candidates_from(
        _preference_matrix(sure + 0.5), ["c"], ["rewrite"], parent_id="p", iteration=1, reference=reference
    )
    assert c.tempered_gap is None and c.tempered_gap_se is None and c.gap_se > 0


def test_a_removal_is_proposed_only_where_masking_says_the_unit_hurts_past_its_noise():
    units = segment("Keep me. Noise. Drop me.")
    reference = INCUMBENT_ROW
    rows = {
        units.without(0): reference + 1.0,  # the unit helps
        units.without(1): reference - 0.05 + SWING,  # lower on average, inside the noise
        units.without(2): reference - 0.5 + RNG.normal(0, 0.1, 50),  # clearly hurts
    }
    effects = masking_analysis(lambda ps: np.stack([rows[p] for p in ps]), float(reference.mean()), units, reference)
    assert [e.delta_loss < 0 for e in effects] == [False, True, True]
    assert all(e.se > 0 for e in effects[1:])
    assert removal_prompts(units.prompt, list(units.texts), effects, gate_z=1.0) == [units.without(2)]
    assert removal_prompts(units.prompt, list(units.texts), effects) == [units.without(1), units.without(2)]  # z 0


class StuckSteps:
    """Steps whose rewrites never beat the incumbent: only patience ends the loop early."""

    model_identity = "stuck"

    def __init__(self):
        self.rewrite_calls = 0

    def losses(self, prompts, train, iteration):
        loss = np.stack([INCUMBENT_ROW[: len(train)] + (0.0 if p == "start" else 1.0) for p in prompts])
        return _matrix(loss)

    def segments(self, prompt, prompt_loss, train, iteration):
        return [prompt], ()

    def rewrites(self, incumbent, train, hard, effects, iteration, seen):
        self.rewrite_calls += 1
        return [f"worse {iteration}"], {}

    def select(self, incumbent, candidates, iteration):
        return select(incumbent, candidates)


TRAIN = Dataset("t", tuple(Supervised(f"x{i}", "y") for i in range(50)))


@pytest.mark.parametrize("patience, ran, stopped", [(2, 2, True), (1, 1, True), (0, 5, False), (None, 5, False)])
def test_patience_stops_a_search_that_accepts_nothing(patience, ran, stopped):
    steps = StuckSteps()
    result = PMPO(config=OptimizerConfig(iterations=5, patience=patience), steps=steps).optimize("start", TRAIN)
    assert len(result.iterations) == steps.rewrite_calls == ran
    assert result.stopped_early is stopped and result.best.prompt == "start"


def test_patience_never_reports_an_early_stop_on_the_last_iteration():
    result = PMPO(config=OptimizerConfig(iterations=2, patience=2), steps=StuckSteps()).optimize("start", TRAIN)
    assert len(result.iterations) == 2 and not result.stopped_early
