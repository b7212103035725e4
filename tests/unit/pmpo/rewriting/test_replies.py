"""Reply parsing and variant filtering: the prompt inside the tags, cut-off replies, rejections by reason."""

import pytest

from pmpo.errors import RewriteParseError
from pmpo.rewriting.replies import (
    REJECT_REASONS,
    UnclosedPromptError,
    filter_variants,
    parse_prompt,
    short_reply_cut_off,
)

PROMPT = "Read the text. Be creative."


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>Answer with one word.</prompt>", "Answer with one word."),
        ("Sure! Here it is:\n<prompt>\n  Answer with one word.\n</prompt>\nHope it helps.", "Answer with one word."),
        ("<prompt>First.</prompt> and <prompt>Second.</prompt>", "First."),
        ("Use <prompt></prompt> tags.\n<PROMPT>Real one.</PROMPT>", "Real one."),
        ("<prompt>Closed.</prompt> then <prompt>cut off", "Closed."),
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


@pytest.mark.parametrize(
    "reply",
    ["<prompt>Cut off in the middle of a sen", "Why it fails: ...\n<prompt></prompt><prompt>Cut off again"],
)
def test_parse_prompt_rejects_an_unclosed_block_as_cut_off(reply):
    with pytest.raises(UnclosedPromptError, match="never closes <prompt>"):
        parse_prompt(reply)


@pytest.mark.parametrize(
    ("reply", "n_tokens", "cut"),
    [
        ("Answer with one word.</prompt>", 160, False),  # closed, however long
        ("Answer with one word.\nTask: next", 160, False),  # stopped at the end of its line: complete
        ("Answer with one word.", 40, False),  # the model ended it well within the budget
        ("Answer with one word and then also", 159, True),  # ran into the budget mid-line
        ("<prompt>Answer with one word and", 160, True),
    ],
)
def test_short_reply_cut_off_only_when_it_ran_into_the_budget_mid_line(reply, n_tokens, cut):
    assert short_reply_cut_off(reply, n_tokens, budget=160) is cut


def test_filter_variants_counts_cut_off_short_replies_as_unclosed():
    replies = ["Answer with one word", "Be brief.</prompt>"]
    kept, rejected = filter_variants(replies, current="x", seen=(), max_chars=100, opened=True, cut_off=[True, False])
    assert kept == ["Be brief."]
    assert rejected["unclosed"] == 1 and rejected["no_tags"] == 0


def test_filter_variants_counts_each_reason():
    replies = [
        "no tags here",  # no_tags
        "<prompt>Cut off in the mid",  # unclosed
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
    assert rejected == {
        "no_tags": 1,
        "unclosed": 1,
        "empty": 1,
        "unchanged": 1,
        "duplicate": 2,
        "too_long": 1,
        "variables": 0,
        "copies_example": 0,  # no examples given (tests/unit/pmpo/rewriting/test_copying.py)
    }
    assert tuple(rejected) == REJECT_REASONS


def test_filter_variants_opened_never_reports_missing_tags():
    kept, rejected = filter_variants(["Be brief.</prompt>", ""], current="x", seen=(), max_chars=100, opened=True)
    assert kept == ["Be brief."]
    assert rejected["no_tags"] == 0 and rejected["empty"] == 1
