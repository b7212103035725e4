"""Segment masking analysis (the paper's step 2): dL_j = L(P without unit j) - L(P) for each removable unit.

Positive dL: the unit helps; negative: it hurts or is redundant. The table of dL_j is shown to the rewriter as a
hint (`pmpo.rewriting.requests`). The units themselves come from `pmpo.masking.units`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from pmpo.loop.result import SegmentEffect
from pmpo.masking.units import Units
from pmpo.scoring.racing import paired_gap
from pmpo.text.template import has_variable


def masking_analysis(
    loss_of: Callable[[list[str]], Sequence[float] | np.ndarray],
    prompt_loss: float,
    units: Units,
    reference: np.ndarray | None = None,
) -> tuple[SegmentEffect, ...]:
    """dL_j = L(prompt without unit j) - L(prompt) for every unit, from one batched `loss_of` call.

    `loss_of` gives each ablated prompt's loss, or its per-example losses (a row each); with per-example rows
    and `reference` (the prompt's own per-example losses) each effect carries the standard error of the paired
    difference, so a removal can be told from noise. `prompt_loss` must be the loss of `units.prompt` itself,
    the text every ablation is cut from. A unit holding a template `{{variable}}` is never cut out (the prompt
    could no longer be filled), so it is not measured and no removal candidate can drop it.
    """
    texts = units.texts
    removable = [j for j, text in enumerate(texts) if not has_variable(text)]
    if not removable:
        return ()
    ablated = [units.without(j) for j in removable]
    rows = np.asarray(loss_of(ablated), dtype=np.float64)
    if len(rows) != len(ablated):
        raise ValueError(f"loss_of returned {len(rows)} losses for {len(ablated)} prompts")
    rows = rows.reshape(len(ablated), -1)  # a prompt-level loss is a row of one
    se = np.zeros(len(rows))
    deltas = np.array([row[~np.isnan(row)].mean() for row in rows]) - float(prompt_loss)
    if reference is not None and rows.shape[1] == len(reference):
        gap, se = paired_gap(rows, reference)
        if np.isnan(rows).any() or np.isnan(reference).any():  # demonstrations left out: pair on the shared examples
            deltas = gap
    return tuple(SegmentEffect(j, texts[j], float(delta), float(e)) for j, delta, e in zip(removable, deltas, se))


def verdict(delta_loss: float) -> str:
    """How a unit's dL reads: removing it raises the loss (helps), lowers it (hurts), or neither."""
    if delta_loss > 0:
        return "helps"
    return "hurts" if delta_loss < 0 else "neutral"


def masking_table(effects: Sequence[SegmentEffect], width: int = 70) -> str:
    """A compact text table of dL per unit for the rewrite request."""
    if not effects:
        return "(no units were measured)"
    rows = ["unit | dL | verdict | text"]
    for e in effects:
        text = " ".join(e.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        rows.append(f"{e.index + 1} | {e.delta_loss:+.2f} | {verdict(e.delta_loss)} | {text}")
    return "\n".join(rows)
