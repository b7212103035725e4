"""Unit splitting and model-marked units (no model, except model_units' plumbing)."""

import pytest

from pmpo.masking.units import locate, marked_units, model_units, segment


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_multi_line_prompt_splits_by_non_empty_lines():
    prompt = "You are a grader.\n\n  Read the essay.\nReply with a grade from A to F."
    assert list(segment(prompt).texts) == ["You are a grader.", "Read the essay.", "Reply with a grade from A to F."]


def test_one_line_prompt_splits_by_sentences():
    prompt = "Read the text. Is it positive? Answer now!"
    assert list(segment(prompt).texts) == ["Read the text.", "Is it positive?", "Answer now!"]


def test_abbreviations_and_decimals_do_not_end_sentences():
    text = "Give a short label, e.g. Yes or No. Round to 3.5 units, i.e. One decimal. Ask Dr. Smith."
    assert list(segment(text, max_units=10).texts) == [
        "Give a short label, e.g. Yes or No.",
        "Round to 3.5 units, i.e. One decimal.",
        "Ask Dr. Smith.",
    ]


def test_sentence_end_needs_a_non_lowercase_start_and_handles_quotes():
    assert list(segment('Use commas, etc. and stop. Say "done." Then wait.').texts) == [
        "Use commas, etc. and stop.",
        'Say "done."',
        "Then wait.",
    ]


def test_many_pieces_merge_to_at_most_max_units_balanced_by_length():
    prompt = "\n".join(f"Rule {i}: {'x' * (5 + i)}" for i in range(12))
    units = list(segment(prompt, max_units=5).texts)
    assert len(units) == 5
    lengths = [len(u) for u in units]
    assert max(lengths) <= 2 * min(lengths)  # no unit swallows most of the prompt
    assert segment(prompt, max_units=5).remove(()) == prompt


def test_merging_is_deterministic_and_keeps_order():
    prompt = "A one. B two. C three. D four. E five. F six. G seven."
    units = list(segment(prompt, max_units=3).texts)
    assert units == list(segment(prompt, max_units=3).texts)
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
    assert units.remove(()) == prompt
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
    assert (
        units.without(0) == "Read the essay twice.\n  Note its thesis and evidence.\n\n\nReply with one letter, A to F."
    )
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
    assert len(units.texts) == 2 and units.remove(()) == MULTI_PARAGRAPH
    assert any("\n\n" in t or "\n  " in t for t in units.texts)


def test_locate_rejects_text_that_is_not_in_the_prompt():
    with pytest.raises(ValueError, match="not a piece of the prompt"):
        locate("Read the text.", ["Write a poem."])


def test_marked_units_are_the_prompts_own_text():
    prompt = "Read the review carefully.  Answer with one word: positive or negative."
    reply = "<mask>read the review carefully.</mask>\n<mask>Answer with one word:\npositive or negative.</mask>"
    assert marked_units(reply, prompt).texts == (
        "Read the review carefully.",
        "Answer with one word: positive or negative.",
    )


def test_marked_units_keep_unmarked_text_in_the_preceding_unit():
    prompt = "Read the review. Think. Answer with one word: positive or negative."
    reply = "<mask>Read the review.</mask> Think. <mask>Answer with one word: positive or negative.</mask>"
    units = marked_units(reply, prompt)
    assert units.texts == ("Read the review. Think.", "Answer with one word: positive or negative.")
    assert locate(prompt, units.texts).remove(()) == prompt


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
def test_marked_units_reject_unusable_replies(reply):
    assert marked_units(reply, "Read the review. Answer with one word.") is None


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


def test_a_demonstration_is_one_unit_and_its_removal_drops_it_whole():
    from pmpo.data.examples import Supervised
    from pmpo.text.demonstrations import shown, with_demonstrations

    examples = [
        Supervised(input="The jacket is warm.\nI love it.", target="positive"),
        Supervised(input="The lamp broke.", target="negative"),
        Supervised(input="Great kettle.", target="positive"),
    ]
    prompt = with_demonstrations("Read the review.\nAnswer with one word.", examples)
    units = segment(prompt)
    assert units.texts[:2] == ("Read the review.", "Answer with one word.")
    assert [t.splitlines()[0] for t in units.texts[2:]] == ["Example 1:", "Example 2:", "Example 3:"]
    for j in range(2, 5):  # without any one demonstration the prompt still shows the other two, whole
        assert shown(units.without(j), examples) == [i for i in range(3) if i != j - 2]
    merged = segment(prompt, max_units=2)  # merging joins whole demonstrations, never part of one
    for j, text in enumerate(merged.texts):  # each demonstration is whole in the unit or whole in the rest
        assert sorted(shown(merged.without(j), examples) + shown(text, examples)) == [0, 1, 2]
