"""Unit splitting, model-marked units and the masking analysis (no model, except model_units' plumbing)."""

import pytest

from pmpo.loop.result import SegmentEffect
from pmpo.masking.units import (
    locate,
    masking_analysis,
    masking_table,
    model_units,
    parse_marked_units,
    segment,
    split_sentences,
    split_units,
)


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_multi_line_prompt_splits_by_non_empty_lines():
    prompt = "You are a grader.\n\n  Read the essay.\nReply with a grade from A to F."
    assert split_units(prompt) == ["You are a grader.", "Read the essay.", "Reply with a grade from A to F."]


def test_one_line_prompt_splits_by_sentences():
    prompt = "Read the text. Is it positive? Answer now!"
    assert split_units(prompt) == ["Read the text.", "Is it positive?", "Answer now!"]


def test_abbreviations_and_decimals_do_not_end_sentences():
    text = "Give a short label, e.g. Yes or No. Round to 3.5 units, i.e. One decimal. Ask Dr. Smith."
    assert split_sentences(text) == [
        "Give a short label, e.g. Yes or No.",
        "Round to 3.5 units, i.e. One decimal.",
        "Ask Dr. Smith.",
    ]


def test_sentence_end_needs_a_non_lowercase_start_and_handles_quotes():
    assert split_sentences('Use commas, etc. and stop. Say "done." Then wait.') == [
        "Use commas, etc. and stop.",
        'Say "done."',
        "Then wait.",
    ]


def test_many_pieces_merge_to_at_most_max_units_balanced_by_length():
    prompt = "\n".join(f"Rule {i}: {'x' * (5 + i)}" for i in range(12))
    units = split_units(prompt, max_units=5)
    assert len(units) == 5
    lengths = [len(u) for u in units]
    assert max(lengths) <= 2 * min(lengths)  # no unit swallows most of the prompt
    assert segment(prompt, max_units=5).join() == prompt


def test_merging_is_deterministic_and_keeps_order():
    prompt = "A one. B two. C three. D four. E five. F six. G seven."
    units = split_units(prompt, max_units=3)
    assert units == split_units(prompt, max_units=3)
    assert len(units) == 3
    assert _norm(" ".join(units)) == _norm(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "Read the text.",
        "Read the text.  Then answer\twith one word, e.g. yes.",
        "Line one\n\n\nline two\n  line three  ",
        "\n".join(f"Step {i}. Do thing {i}." for i in range(9)),
        "",
    ],
)
def test_units_are_spans_that_rejoin_to_the_prompt_byte_for_byte(prompt):
    units = segment(prompt)
    assert len(units.texts) <= 5
    assert units.join() == prompt
    assert all(units.prompt[a:b] == t and t == t.strip() for (a, b), t in zip(units.spans, units.texts))
    assert locate(prompt, units.texts) == units


def test_without_removes_exactly_that_unit_and_one_separator():
    units = segment("First. Second.  Third.")
    assert units.without(1) == "First.  Third."  # of the two separators around it, the longer stays
    assert units.without(0) == "Second.  Third."
    assert units.without(2) == "First. Second."
    assert segment("Only.").without(0) == ""
    assert segment("A.\nB.").without(0) == "B."


MULTI_PARAGRAPH = (
    "You grade short essays.\n"
    "\n"
    "Read the essay twice.\n"
    "  Note its thesis and evidence.\n"
    "\n"
    "\n"
    "Reply with one letter, A to F."
)


def test_multi_paragraph_ablations_keep_every_other_blank_line_and_indent():
    units = segment(MULTI_PARAGRAPH)
    assert units.texts == (
        "You grade short essays.",
        "Read the essay twice.",
        "Note its thesis and evidence.",
        "Reply with one letter, A to F.",
    )
    assert units.remove(()) == MULTI_PARAGRAPH
    assert units.without(0) == "Read the essay twice.\n  Note its thesis and evidence.\n\n\nReply with one letter, A to F."
    # The paragraph break after the removed line survives (the stronger of its two separators).
    assert units.without(2) == "You grade short essays.\n\nRead the essay twice.\n\n\nReply with one letter, A to F."
    assert units.without(3) == "You grade short essays.\n\nRead the essay twice.\n  Note its thesis and evidence."
    for j, text in enumerate(units.texts):  # the rest of the prompt is untouched, byte for byte
        ablated = units.without(j)
        assert text not in ablated
        others = [t for t in units.texts if t != text]
        assert [ablated.index(t) for t in others] == sorted(ablated.index(t) for t in others)


def test_merged_units_keep_their_inner_blank_lines():
    units = segment(MULTI_PARAGRAPH, max_units=2)
    assert len(units.texts) == 2 and units.join() == MULTI_PARAGRAPH
    assert any("\n\n" in t or "\n  " in t for t in units.texts)


def test_locate_rejects_text_that_is_not_in_the_prompt():
    with pytest.raises(ValueError, match="not a piece of the prompt"):
        locate("Read the text.", ["Write a poem."])


def test_parse_marked_units_returns_the_prompts_own_text():
    prompt = "Read the review carefully.  Answer with one word: positive or negative."
    reply = "<mask>read the review carefully.</mask>\n<mask>Answer with one word:\npositive or negative.</mask>"
    assert parse_marked_units(reply, prompt) == [
        "Read the review carefully.",
        "Answer with one word: positive or negative.",
    ]


def test_parse_marked_units_keeps_unmarked_text_in_the_preceding_unit():
    prompt = "Read the review. Think. Answer with one word: positive or negative."
    reply = "<mask>Read the review.</mask> Think. <mask>Answer with one word: positive or negative.</mask>"
    units = parse_marked_units(reply, prompt)
    assert units == ["Read the review. Think.", "Answer with one word: positive or negative."]
    assert locate(prompt, units).join() == prompt


@pytest.mark.parametrize(
    "reply",
    [
        "Read the review. Answer with one word.",  # no tags
        "".join(f"<mask>w{i}</mask>" for i in range(6)),  # more than max_units
        "<mask>Summarise the review.</mask><mask>Answer with one word.</mask>",  # not the prompt's text
        "<mask>Answer with one word.</mask><mask>Read the review.</mask>",  # out of order
        "<mask>Read</mask>",  # covers too little of the prompt
        "<mask>  </mask>",  # only empty units
    ],
)
def test_parse_marked_units_rejects_unusable_replies(reply):
    assert parse_marked_units(reply, "Read the review. Answer with one word.") is None


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


def test_model_units_falls_back_to_the_splitter_on_a_random_model(tiny_lm):
    prompt = "Read the review. Answer with one word."
    assert model_units(tiny_lm, prompt, seed=0) == segment(prompt)


def test_model_units_uses_the_models_marks_when_usable(tiny_lm, monkeypatch):
    prompt = "Read the review. Answer with one word."
    requests = []

    def fake_sample(lm, text, n, **kwargs):
        requests.append(text)
        return ["<mask>Read the review.</mask> <mask>Answer with one word.</mask>"]

    monkeypatch.setattr("pmpo.masking.units.sample", fake_sample)
    units = model_units(tiny_lm, prompt, seed=0)
    assert units.texts == ("Read the review.", "Answer with one word.")
    assert units.without(0) == "Answer with one word."
    assert prompt in requests[0] and "<mask>" in requests[0]
