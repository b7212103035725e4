"""Rewrite requests, reply parsing and variant filtering; `propose` plumbing on the tiny random model."""

import pytest

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.errors import RewriteParseError
from pmpo.result import SegmentEffect
from pmpo.rewrite import (
    REJECT_REASONS,
    Proposal,
    RewriteSettings,
    build_request,
    choose_template,
    expected_answer,
    filter_variants,
    hard_examples,
    parse_prompt,
    propose,
)

EFFECTS = (SegmentEffect(0, "Read the text.", 1.25), SegmentEffect(1, "Be creative.", -0.5))
TASK = "Classify the sentiment of a product review."
PROMPT = "Read the text. Be creative."


def test_hard_examples_are_the_highest_losses_with_ties_to_the_lower_index():
    assert hard_examples([1.0, 5.0, 3.0, 5.0, 0.5], 3) == [1, 3, 2]
    assert hard_examples([2.0, 2.0, 2.0], 2) == [0, 1]
    assert hard_examples([1.0], 3) == [0]
    assert hard_examples([1.0, 2.0], 0) == []


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


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>Answer with one word.</prompt>", "Answer with one word."),
        ("Sure! Here it is:\n<prompt>\n  Answer with one word.\n</prompt>\nHope it helps.", "Answer with one word."),
        ("<prompt>First.</prompt> and <prompt>Second.</prompt>", "First."),
        ("Use <prompt></prompt> tags.\n<PROMPT>Real one.</PROMPT>", "Real one."),
        ("<prompt>Unclosed at the end of the reply.", "Unclosed at the end of the reply."),
        ("<prompt>\n```\nFenced prompt.\n```\n</prompt>", "Fenced prompt."),
        ("```\n<prompt>Inside a fence.</prompt>\n```", "Inside a fence."),
        ("<prompt>  </prompt>", ""),
    ],
)
def test_parse_prompt(reply, expected):
    assert parse_prompt(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer with one word.</prompt>", "Answer with one word."),
        ("\n Answer with one word.\nTask: next entry", "Answer with one word."),
        ("<prompt>Repeated tag.</prompt>", "Repeated tag."),
        ("no closing tag at all", "no closing tag at all"),
        ("</prompt>", ""),
    ],
)
def test_parse_prompt_opened(reply, expected):
    assert parse_prompt(reply, opened=True) == expected


def test_parse_prompt_without_tags_names_the_problem_and_quotes_the_reply():
    with pytest.raises(RewriteParseError) as info:
        parse_prompt("I think the instruction\nis fine as it is.")
    message = str(info.value)
    assert "<prompt>" in message and "'I think the instruction is fine as it is.'" in message


def test_filter_variants_counts_each_reason():
    replies = [
        "no tags here",  # no_tags
        "<prompt> </prompt>",  # empty
        "<prompt>Read the text.   Be creative.</prompt>",  # unchanged (whitespace differs)
        "<prompt>Seen before.</prompt>",  # duplicate of `seen`
        "<prompt>  New one.  </prompt>",  # kept
        "<prompt>New   one.</prompt>",  # duplicate within the batch
        "<prompt>" + "x" * 50 + "</prompt>",  # too_long
        "<prompt>Another new one.</prompt>",  # kept
    ]
    kept, rejected = filter_variants(replies, current=PROMPT, seen=["Seen  before."], max_chars=40, opened=False)
    assert kept == ["New one.", "Another new one."]
    assert rejected == {"no_tags": 1, "empty": 1, "unchanged": 1, "duplicate": 2, "too_long": 1}
    assert tuple(rejected) == REJECT_REASONS


def test_filter_variants_opened_never_reports_missing_tags():
    kept, rejected = filter_variants(["Be brief.</prompt>", ""], current="x", seen=(), max_chars=100, opened=True)
    assert kept == ["Be brief."]
    assert rejected["no_tags"] == 0 and rejected["empty"] == 1


@pytest.mark.parametrize("template", ["full", "short"])
def test_propose_on_tiny_model_accounts_for_every_sample(tiny_lm, template):
    settings = RewriteSettings(template=template, n_variants=3, max_new_tokens=12)
    kwargs = dict(
        prompt=PROMPT,
        example=Supervised("Review: great.", "positive"),
        effects=EFFECTS,
        task_description=TASK,
        settings=settings,
    )
    proposal = propose(tiny_lm, seed=0, **kwargs)
    assert isinstance(proposal, Proposal)
    assert len(proposal.variants) + sum(proposal.rejected.values()) == 3
    assert PROMPT in proposal.request
    assert propose(tiny_lm, seed=0, **kwargs) == proposal  # same seed, same proposal


def _capture_requests(monkeypatch):
    sent = []

    def fake_sample(lm, text, n, **kwargs):
        sent.append(text)
        return [" Answer with one word.</prompt>", "Answer with one word.", "Read the text. Be creative."][:n]

    monkeypatch.setattr("pmpo.rewrite.sample", fake_sample)
    return sent


def _propose_short(lm, **settings):
    return propose(
        lm,
        prompt=PROMPT,
        example=Supervised("Review: great.", "positive"),
        effects=EFFECTS,
        task_description=TASK,
        settings=RewriteSettings(template="short", n_variants=3, **settings),
        seed=0,
    )


def test_propose_sends_the_short_form_as_a_completion(tiny_lm, monkeypatch):
    sent = _capture_requests(monkeypatch)
    proposal = _propose_short(tiny_lm)
    assert sent == [proposal.request]  # plain text, no chat template around it
    assert proposal.variants == ("Answer with one word.",)
    assert proposal.rejected["duplicate"] == 1 and proposal.rejected["unchanged"] == 1


def test_propose_can_send_the_short_form_as_a_chat_turn(tiny_lm, monkeypatch):
    sent = _capture_requests(monkeypatch)
    proposal = _propose_short(tiny_lm, short_as_completion=False)
    assert sent[0].startswith("<|im_start|>") and proposal.request in sent[0]
    assert sent[0].endswith("<|im_start|>assistant\n<prompt>")
    assert proposal.variants == ("Answer with one word.",)

