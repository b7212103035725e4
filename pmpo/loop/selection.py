"""Candidates and selection: scored prompts become candidates (identified by their text), and the incumbent is
replaced only by a candidate whose loss is lower by more than the noise of the comparison (`SelectionSettings`;
gate_z = 0 without the accuracy guard is the paper's rule: strictly lower)."""

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
    reference: np.ndarray | None = None,
) -> list[Candidate]:
    """Wrap scored prompts as candidates (`dropped`: racing stopped them short of the whole training set;
    `reference`: the parent's per-example losses on the same examples, for each candidate's paired `gap_se`, and its `gap` where either side leaves out examples it shows)."""
    losses, per_token = matrix.prompt_loss(), matrix.prompt_loss_per_token()
    accuracy, accuracy_norm = matrix.prompt_accuracy(), matrix.prompt_accuracy(norm=True)
    gap: list[float | None] = [None] * len(prompts)
    gap_se: list[float | None] = [None] * len(prompts)
    if reference is not None and not dropped:
        mean, se = paired_gap(matrix.loss, reference)
        gap_se = se.tolist()
        # Where a side leaves out its demonstrations the means are over different examples: pair them instead.
        gap = [
            float(m) if np.isnan(matrix.loss[i]).any() or np.isnan(reference).any() else None
            for i, m in enumerate(mean)
        ]
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
        )
        for i, (p, origin) in enumerate(zip(prompts, origins))
    ]


def passes_gate(candidate: Candidate, incumbent: Candidate, settings: SelectionSettings) -> bool:
    """Whether `candidate` may replace `incumbent`: loss lower by more than gate_z paired standard errors
    (candidate - incumbent + z * se < 0) and, with keep_accuracy, no fewer multiple-choice hits, in total or per byte."""
    if candidate.dropped:  # its loss is over fewer examples than the incumbent's
        return False
    noise = settings.gate_z * (candidate.gap_se or 0.0)  # no estimate (one example): the mean alone decides
    if not gain(candidate, incumbent) + noise < 0:  # z = 0: exactly candidate.loss < incumbent.loss
        return False
    if settings.keep_accuracy:  # neither acc nor acc_norm may drop
        pairs = [(candidate.accuracy, incumbent.accuracy), (candidate.accuracy_norm, incumbent.accuracy_norm)]
        return all(new >= old for new, old in pairs if new is not None and old is not None)
    return True


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
