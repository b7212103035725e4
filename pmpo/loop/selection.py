"""Candidates and selection: scored prompts become candidates (identified by their text), and the incumbent is
replaced only by a candidate with a strictly lower loss (the paper's rule)."""

from __future__ import annotations

import hashlib
from typing import Sequence

from pmpo.loop.result import Candidate, Origin
from pmpo.scoring.loss import LossMatrix


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
) -> list[Candidate]:
    """Wrap scored prompts as candidates (`dropped`: racing stopped them short of the whole training set)."""
    losses, per_token = matrix.prompt_loss(), matrix.prompt_loss_per_token()
    return [
        Candidate(
            id=candidate_id(p),
            parent_id=parent_id,
            iteration=iteration,
            origin=origin,
            prompt=p,
            loss=float(losses[i]),
            loss_per_token=float(per_token[i]),
            n_examples=matrix.loss.shape[1],
            dropped=dropped,
        )
        for i, (p, origin) in enumerate(zip(prompts, origins))
    ]


def select(incumbent: Candidate, candidates: Sequence[Candidate]) -> Candidate:
    """The lowest-loss candidate if strictly lower than the incumbent, else the incumbent (ties keep it).

    Candidates racing dropped early never win: their loss is over fewer examples than the incumbent's.
    """
    best = min((c for c in candidates if not c.dropped), key=lambda c: (c.loss, c.id), default=None)
    return best if best is not None and best.loss < incumbent.loss else incumbent
