"""Parsing rewriter replies: the new prompt inside `<prompt>...</prompt>`, and the replies dropped, by reason.

A reply that opened `<prompt>` but never closed it ran out of tokens mid-instruction ("unclosed"). SHORT
replies (the request already opened the tag; generation stops at "</prompt>" or the end of the first
line) carry no closing tag to tell, so their token count says whether they ran into the budget (a chat
endpoint's: whether they ended at the stop string or on their own).
"""

from __future__ import annotations

import re
from typing import Collection, Sequence

from pmpo.errors import RewriteParseError
from pmpo.rewriting.copying import COPY_RUN_WORDS, copied_run
from pmpo.text.template import same_variables

# "variables": the reply dropped, renamed or added a template {{variable}}; the application could not fill it.
# "copies_example": the prompt quotes the training example the request showed (pmpo.rewriting.copying).
REJECT_REASONS = ("no_tags", "unclosed", "empty", "unchanged", "duplicate", "too_long", "variables", "copies_example")
# Decoding sampled tokens and encoding the text again can merge a few of them: a SHORT reply this close
# to its token budget counts as having run into it.
_REENCODE_SLACK = 3


class UnclosedPromptError(RewriteParseError):
    """A rewriter reply opened <prompt> but stopped before closing it: the instruction was cut off."""


def parse_prompt(reply: str, *, opened: bool = False) -> str:
    """The text of the first non-empty <prompt>...</prompt> block; an unclosed one raises UnclosedPromptError.

    With `opened` (the SHORT form, whose request ends in an opening tag) the reply is the first line of
    text up to `</prompt>` (a repeated opening tag is skipped): the form asks for a one-line instruction,
    and a small model that goes on to a second line is writing the next form entry, not the prompt.
    Whether such a reply was cut off cannot be read from its text (see `short_reply_cut_off`).
    """
    if opened:
        body = _CLOSE.split(_LEADING_OPEN.sub("", reply), maxsplit=1)[0]
        return _clean(body.strip().split("\n", 1)[0])
    blocks = _OPEN.split(reply)[1:]
    if not blocks:
        start = " ".join(reply.split())[:80]
        raise RewriteParseError(f"the rewriter's reply has no <prompt> tag; it starts: {start!r}")
    for block in blocks:
        parts = _CLOSE.split(block, maxsplit=1)
        body = _clean(parts[0])
        if body and len(parts) == 1:  # generation stops at </prompt>, so a missing one means it ran out
            raise UnclosedPromptError(f"the rewriter's reply never closes <prompt>; it ends: {body[-80:]!r}")
        if body:
            return body
    return ""


def short_reply_cut_off(reply: str, n_tokens: int, budget: int) -> bool:
    """Whether a SHORT reply of `n_tokens` ran into its token budget before ending its instruction.

    SHORT replies stop at "</prompt>" or at the end of the first line of text: either way the one-line
    instruction is complete, and so is one the model ended itself (fewer tokens than the budget). Only a
    reply with neither, as long as the budget, was cut off mid-instruction.
    """
    return short_reply_unended(reply) and n_tokens >= budget - _REENCODE_SLACK


def short_reply_unended(reply: str) -> bool:
    """Whether a SHORT reply's text shows no end of its one-line instruction: no "</prompt>", no line break."""
    text = _LEADING_OPEN.sub("", reply).lstrip()
    return not (_CLOSE.search(text) or "\n" in text)


def filter_variants(
    replies: Sequence[str],
    *,
    current: str,
    seen: Collection[str],
    max_chars: int,
    opened: bool,
    cut_off: Sequence[bool] = (),
    variables: Sequence[str] = (),
    examples: Sequence[str] = (),
    copy_words: int = COPY_RUN_WORDS,
) -> tuple[list[str], dict[str, int]]:
    """Parse replies and keep the new, usable prompts; count the dropped ones by reason.

    `cut_off[i]`: reply i ran into its token budget mid-instruction (SHORT replies, which carry no
    closing tag to tell); such a reply is "unclosed", like a FULL reply that never closes <prompt>.
    `variables`: the template variables of the current prompt; a prompt without exactly these is "variables".
    `examples`: texts of the training examples the request showed; a prompt with a run of `copy_words` of their
    words (template variables and the current prompt's words exempt) is "copies_example".
    """
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    known = {_norm(s) for s in seen}
    kept: list[str] = []
    for i, reply in enumerate(replies):
        try:
            if i < len(cut_off) and cut_off[i]:
                raise UnclosedPromptError("the reply ran into its token budget")
            text = parse_prompt(reply, opened=opened)
        except UnclosedPromptError:
            rejected["unclosed"] += 1
            continue
        except RewriteParseError:
            rejected["no_tags"] += 1
            continue
        reason = _reject_reason(text, current, known, max_chars, variables)
        if not reason and examples and copied_run(text, examples, prompt=current, n=copy_words):
            reason = "copies_example"
        if reason:
            rejected[reason] += 1
            continue
        known.add(_norm(text))
        kept.append(text)
    return kept, rejected


_OPEN = re.compile(r"<\s*prompt\s*>", re.IGNORECASE)
_LEADING_OPEN = re.compile(r"^\s*<\s*prompt\s*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*prompt\s*>", re.IGNORECASE)
_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?\s*```$")


def _clean(body: str) -> str:
    """Strip whitespace and a markdown fence around the prompt text."""
    return _FENCE.sub("", body.strip()).strip()


def _norm(text: str) -> str:
    return " ".join(text.split())


def _reject_reason(text: str, current: str, known: set[str], max_chars: int, variables: Sequence[str]) -> str | None:
    if not text:
        return "empty"
    if not same_variables(text, variables):
        return "variables"
    if _norm(text) == _norm(current):
        return "unchanged"
    if _norm(text) in known:
        return "duplicate"
    if len(text) > max_chars:
        return "too_long"
    return None
