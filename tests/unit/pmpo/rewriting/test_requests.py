"""Rewrite requests: which template, and what the FULL and SHORT requests show."""

import pytest

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.loop.result import SegmentEffect
from pmpo.rewriting.requests import build_request, choose_template, expected_answer

EFFECTS = (SegmentEffect(0, "Read the text.", 1.25), SegmentEffect(1, "Be creative.", -0.5))
TASK = "Classify the sentiment of a product review."
PROMPT = "Read the text. Be creative."


def test_choose_template():
    assert choose_template("auto", 135_000_000, 1_000_000_000) == "short"
    assert choose_template("auto", 7_000_000_000, 1_000_000_000) == "full"
    assert choose_template("full", 135_000_000, 1_000_000_000) == "full"
    assert choose_template("short", 7_000_000_000, 1_000_000_000) == "short"
    with pytest.raises(ValueError, match="'tiny'"):
        choose_template("tiny", 1, 1)


def test_expected_answer_per_kind():
    assert expected_answer(Supervised("x", "y")) == "y"
    assert expected_answer(MultipleChoice("x", ("a", "b"), "b")) == "b"
    assert expected_answer(Preference("x", "good", ("bad",))) == "good"


@pytest.mark.parametrize("template", ["full", "short"])
def test_build_request_shows_every_part(template):
    example = Supervised("Review: The blender broke after two days.", "negative")
    request = build_request(template, task_description=TASK, example=example, prompt=PROMPT, effects=EFFECTS)
    for part in (TASK, example.input, "negative", PROMPT, "Read the text.", "Be creative.", "<prompt>"):
        assert part in request
    if template == "full":
        assert "+1.25" in request and "-0.50" in request and "hurts" in request
        assert "output format" in request and "</prompt>" in request
    else:
        assert request.endswith("New instruction: <prompt>")
        assert 'Good part: "Read the text."' in request and 'Weak part: "Be creative."' in request


@pytest.mark.parametrize("template", ["full", "short"])
def test_build_request_shows_options_and_a_rejected_answer(template):
    mc = MultipleChoice("Is it plausible?", ("yes", "no"), "no")
    request = build_request(template, task_description=TASK, example=mc, prompt=PROMPT, effects=EFFECTS)
    assert "yes" in request and "no" in request and "Options" in request
    pref = Preference("Write a haiku.", "An old silent pond", ("Roses are red",))
    request = build_request(template, task_description=TASK, example=pref, prompt=PROMPT, effects=EFFECTS)
    assert "An old silent pond" in request and "Roses are red" in request


def test_build_request_clips_long_inputs():
    example = Supervised("word " * 2000, "y")
    request = build_request("full", task_description=TASK, example=example, prompt=PROMPT, effects=EFFECTS)
    assert len(request) < 4000
