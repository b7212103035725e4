"""Candidates and selection: scored prompts become candidates (identified by their text), and the incumbent is
replaced only by a candidate whose loss is lower by more than the noise of the comparison, also once each prompt's
preference pairs are softened as suits it best (`SelectionSettings`; gate_z = 0 without the accuracy guard and the
tempered gate is the paper's rule: strictly lower)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from pmpo.loop.result import Candidate, Origin
from pmpo.loop.settings import SelectionSettings
from pmpo.scoring.loss import LossMatrix
from pmpo.scoring.racing import paired_gap


def candidate_id(prompt: str) -> str:
    """Content id of a prompt: the same text is the same candidate."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def candidates_from(
    matrix: LossMatrix,
    prompts: Sequence[str],
    origins: Sequence[Origin],
    *,
    parent_id: str | None,
    iteration: int,
    dropped: bool = False,
    reference: LossMatrix | None = None,
) -> list[Candidate]:
    """Wrap scored prompts as candidates (`dropped`: racing stopped them short of the whole training set;
    `reference`: the parent's one-row matrix on the same examples, for each candidate's paired `gap_se`, its `gap`
    where either side leaves out examples it shows, and its tempered gap)."""
    losses, per_token = matrix.prompt_loss(), matrix.prompt_loss_per_token()
    accuracy, accuracy_norm = matrix.prompt_accuracy(), matrix.prompt_accuracy(norm=True)
    none: list[float | None] = [None] * len(prompts)
    gap, gap_se, tempered_gap, tempered_se = none, none, none, none
    if reference is not None and not dropped:
        parent = reference.loss[0]
        mean, se = paired_gap(matrix.loss, parent)
        gap_se = se.tolist()
        # Where a side leaves out its demonstrations the means are over different examples: pair them instead.
        gap = [
            float(m) if np.isnan(matrix.loss[i]).any() or np.isnan(parent).any() else None for i, m in enumerate(mean)
        ]
        tempered_gap, tempered_se = _tempered_gaps(matrix, reference)
    n_scored = matrix.n_scored()
    return [
        Candidate(
            id=candidate_id(p),
            parent_id=parent_id,
            iteration=iteration,
            origin=origin,
            prompt=p,
            loss=float(losses[i]),
            loss_per_token=float(per_token[i]),
            n_examples=int(n_scored[i]),
            dropped=dropped,
            gap_se=gap_se[i],
            gap=gap[i],
            accuracy=accuracy[i],
            accuracy_norm=accuracy_norm[i],
            tempered_gap=tempered_gap[i],
            tempered_gap_se=tempered_se[i],
        )
        for i, (p, origin) in enumerate(zip(prompts, origins))
    ]


def _tempered_gaps(matrix: LossMatrix, reference: LossMatrix) -> tuple[list[float | None], list[float | None]]:
    """Each row's paired (mean, se) to the reference on the tempered losses; None where neither side's tempered
    losses differ from its losses (nothing was softened: the plain gap is the same test)."""
    if matrix.tempered is None or reference.tempered is None:  # an older cached result: not recorded
        return [None] * len(matrix.loss), [None] * len(matrix.loss)
    mean, se = paired_gap(matrix.tempered, reference.tempered[0])
    parent_same = np.array_equal(reference.tempered, reference.loss, equal_nan=True)
    same = [
        parent_same and np.array_equal(soft, plain, equal_nan=True) for soft, plain in zip(matrix.tempered, matrix.loss)
    ]
    return [None if s else float(m) for s, m in zip(same, mean)], [None if s else float(e) for s, e in zip(same, se)]


def passes_gate(candidate: Candidate, incumbent: Candidate, settings: SelectionSettings) -> bool:
    """Whether `candidate` may replace `incumbent`: loss lower by more than gate_z paired standard errors
    (candidate - incumbent + z * se < 0), with tempered_gate the tempered losses too, and, with keep_accuracy, no
    fewer multiple-choice hits, in total or per byte."""
    if candidate.dropped:  # its loss is over fewer examples than the incumbent's
        return False
    if not clears(gain(candidate, incumbent), candidate.gap_se, settings.gate_z):
        return False
    if settings.tempered_gate and candidate.tempered_gap is not None:  # a less sure model is no better prompt
        if not clears(candidate.tempered_gap, candidate.tempered_gap_se, settings.gate_z):
            return False
    if settings.keep_accuracy:  # neither acc nor acc_norm may drop
        pairs = [(candidate.accuracy, incumbent.accuracy), (candidate.accuracy_norm, incumbent.accuracy_norm)]
        return all(new >= old for new, old in pairs if new is not None and old is not None)
    return True


def clears(gap: float, se: float | None, z: float) -> bool:
    """Whether a paired gap is below zero by more than z standard errors: gap + z * se < 0 (z = 0: exactly gap < 0;
    no estimate, one example: the mean alone decides). The gate's rule, and the masking's for proposing removals."""
    return gap + z * (se or 0.0) < 0


def select(
    incumbent: Candidate, candidates: Sequence[Candidate], settings: SelectionSettings = SelectionSettings()
) -> Candidate:
    """Among the candidates that pass the gate, the largest gain over the incumbent (the lowest loss, where all were
    scored on every example; ties by loss, then id); the incumbent when none does.

    Candidates racing dropped early never win: their loss is over fewer examples than the incumbent's.
    """
    passed = [c for c in candidates if passes_gate(c, incumbent, settings)]
    return min(passed, key=lambda c: (gain(c, incumbent), c.loss, c.id), default=incumbent)


def gain(candidate: Candidate, incumbent: Candidate) -> float:
    """How much lower the candidate's loss is than the incumbent's (negative: lower). Over the same examples: the
    plain difference of the means, unless either leaves out examples it shows as demonstrations; then the paired
    difference over the examples both were scored on (`Candidate.gap`)."""
    return candidate.loss - incumbent.loss if candidate.gap is None else candidate.gap
