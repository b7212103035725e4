"""The masking analysis on made-up losses: one batched call, signed dL per unit, the table the rewriter reads."""

import pytest

from pmpo.loop.result import SegmentEffect
from pmpo.masking.analysis import masking_analysis, masking_table
from pmpo.masking.units import segment


def test_masking_analysis_batches_all_ablations_in_one_call_and_signs_deltas():
    units = segment("Helpful unit. Harmful unit. Useless unit.")
    losses = {
        "Harmful unit. Useless unit.": 12.0,  # without the helpful unit: worse
        "Helpful unit. Useless unit.": 8.0,  # without the harmful unit: better
        "Helpful unit. Harmful unit.": 10.0,  # without the useless unit: the same
    }
    calls = []

    def loss_of(prompts):
        calls.append(list(prompts))
        return [losses[p] for p in prompts]

    effects = masking_analysis(loss_of, 10.0, units)
    assert len(calls) == 1 and len(calls[0]) == 3
    assert [e.delta_loss for e in effects] == [2.0, -2.0, 0.0]
    assert tuple(e.text for e in effects) == units.texts
    assert [e.index for e in effects] == [0, 1, 2]


def test_masking_analysis_single_unit_ablates_to_empty_prompt():
    seen = []
    effects = masking_analysis(lambda ps: seen.extend(ps) or [5.0], 3.0, segment("Only unit."))
    assert seen == [""]
    assert effects == (SegmentEffect(0, "Only unit.", 2.0),)


def test_masking_analysis_rejects_a_loss_of_with_the_wrong_length():
    with pytest.raises(ValueError, match="2 losses for 3 prompts"):
        masking_analysis(lambda ps: [1.0, 2.0], 1.0, segment("A. B. C."))


def test_masking_table_shows_number_signed_delta_verdict_and_truncated_text():
    effects = (SegmentEffect(0, "Keep me.", 1.5), SegmentEffect(1, "Drop me " + "x" * 200, -0.25))
    table = masking_table(effects)
    lines = table.splitlines()
    assert lines[1] == "1 | +1.50 | helps | Keep me."
    assert lines[2].startswith("2 | -0.25 | hurts | Drop me x")
    assert lines[2].endswith("...") and len(lines[2]) < 100
    assert masking_table(()) == "(no units were measured)"
