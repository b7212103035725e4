"""Rewrite proposal (the paper's steps 3 and 4): pick the hard examples (the k = 3 highest-loss training
examples under the current prompt), and for each one ask the rewriter model for n = 4 sampled variants.

The request is built in `pmpo.rewriting.requests` (FULL or SHORT template). Replies are parsed defensively
(`pmpo.rewriting.replies`) and the unusable ones are counted by reason; a reply cut off before its instruction
ended ("unclosed") is one of them, so the token budget grows with the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Sequence

from pmpo.data.examples import Example
from pmpo.errors import ContextLengthError
from pmpo.loop.result import SegmentEffect
from pmpo.models.generation import sample
from pmpo.models.loading import LoadedModel
from pmpo.rewriting.backends import Rewriter, as_rewriter, local_model
from pmpo.rewriting.copying import example_texts
from pmpo.rewriting.diagnosis import preferred_answer
from pmpo.rewriting.replies import filter_variants, short_reply_cut_off, short_reply_unended
from pmpo.rewriting.requests import build_request, choose_template

# The settings live in pmpo.rewriting.settings; their names are re-exported here, where callers look for them.
from pmpo.rewriting.settings import RewriteSettings, Template  # noqa: F401
from pmpo.scoring.loss import BaseScorer, Scorer
from pmpo.text.rendering import chat_request
from pmpo.text.template import variables

# A rewrite may restate the whole prompt with edits: twice its tokens plus room for a short prompt to grow.
_PROMPT_GROWTH_TOKENS = 32


@dataclass(frozen=True)
class RewriteOutcome:
    """The variants one rewrite request produced, and how many replies were dropped, by reason."""

    variants: tuple[str, ...]
    rejected: dict[str, int]  # every reason in replies.REJECT_REASONS, zero counts included
    request: str  # the request message (before any chat template)


def hard_examples(example_losses: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest-loss examples, highest first; ties go to the lower index. An example with no
    loss (NaN: the prompt shows it as a demonstration) is never hard."""
    scored = [i for i in range(len(example_losses)) if not math.isnan(float(example_losses[i]))]
    order = sorted(scored, key=lambda i: (-float(example_losses[i]), i))
    return order[: max(k, 0)]


def propose(
    rewriter: Rewriter | LoadedModel,
    *,
    prompt: str,
    example: Example,
    effects: Sequence[SegmentEffect],
    task_description: str,
    settings: RewriteSettings,
    seed: int,
    seen: Collection[str] = (),
    scorer: BaseScorer | None = None,
    scored_prompt: str | None = None,
) -> RewriteOutcome:
    """One rewrite request for one hard example, sampled `settings.n_variants` times by `rewriter`, filtered.

    The FULL template shows what the *scored* model now prefers on the example, found with `scorer` (for an
    in-process rewriter that is also the scored model, a fresh scorer when None; pass the run's scorer so its
    memo is reused), under `scored_prompt` when `prompt` is only the optimised part of it (a chat prompt's
    system message).
    """
    rewriter = as_rewriter(rewriter)
    lm = local_model(rewriter)
    template = choose_template(settings.template, rewriter.n_params, settings.small_model_params)
    preferred = None
    if template == "full":  # costs a scoring pass or a greedy decode: only the FULL template shows it
        if scorer is None and lm is None:
            raise TypeError("the FULL template needs the scorer of the scored model when the rewriter is remote")
        scorer = scorer or Scorer(lm)
        preferred = preferred_answer(scorer.lm, scorer, scored_prompt or prompt, example)
    message = build_request(
        template,
        task_description=task_description,
        example=example,
        prompt=prompt,
        effects=effects,
        preferred=preferred,
    )
    opened = template == "short"  # the SHORT form ends inside an opened <prompt> tag
    if lm is None:
        replies, cut_off = _chat_replies(rewriter, message, settings, template, prompt, seed, scorer, opened)
    else:
        replies, cut_off = _local_replies(lm, message, settings, template, prompt, seed, opened)
    variants, rejected = filter_variants(
        replies,
        current=prompt,
        seen=seen,
        max_chars=settings.max_prompt_chars,
        opened=opened,
        cut_off=cut_off,
        variables=variables(prompt),
        # The request shows one training example, the hard one: that is the one a rewrite can copy.
        examples=example_texts(example),
    )
    return RewriteOutcome(variants=tuple(variants), rejected=rejected, request=message)


def _local_replies(
    lm: LoadedModel, message: str, settings: RewriteSettings, template: str, prompt: str, seed: int, opened: bool
) -> tuple[list[str], list[bool]]:
    """Replies of an in-process rewriter: raw continuation for the SHORT form, stop strings, context budget."""
    if opened and settings.short_as_completion:
        text = message
    else:
        text = chat_request(lm.tokenizer, message) + ("<prompt>" if opened else "")
    budget = rewrite_budget(lm, settings, template, prompt=prompt, request=text)
    replies = sample(
        lm,
        text,
        settings.n_variants,
        seed=seed,
        max_new_tokens=budget,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=("</prompt>", "\n") if opened else ("</prompt>",),  # where parsing would cut anyway
    )
    cut_off = [short_reply_cut_off(r, _n_tokens(lm, r), budget) for r in replies] if opened else []
    return replies, cut_off


def _chat_replies(
    rewriter: Rewriter,
    message: str,
    settings: RewriteSettings,
    template: str,
    prompt: str,
    seed: int,
    scorer: BaseScorer | None,
    opened: bool,
) -> tuple[list[str], list[bool]]:
    """Replies of a remote rewriter: the request as one user turn (a chat endpoint cannot continue raw text).

    Its tokenizer and context are unknown: the budget counts the prompt in the scored model's tokens (a
    close enough stand-in for "twice the prompt") and leaves the context to the server.
    """
    tokens = len(scorer.lm.tokenizer.encode(prompt, add_special_tokens=False)) if scorer else len(prompt) // 3
    budget = max(settings.max_new_tokens, 2 * tokens + _PROMPT_GROWTH_TOKENS)
    budget += settings.diagnosis_tokens if template == "full" else 0
    # Only "</prompt>": a stop at a newline would also end a reply that merely opens with one.
    replies = rewriter.reply(
        message,
        n=settings.n_variants,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
        max_tokens=budget,
        stop=("</prompt>",),
    )
    # A reply that stopped at "</prompt>" or ended its turn ends with "</prompt>" (`ChatRewriter` adds what the API
    # strips); a SHORT one that shows no end of its line ran out of tokens mid-instruction, though it reads complete.
    cut_off = [short_reply_unended(r) for r in replies] if opened else []
    return replies, cut_off


def rewrite_budget(lm: LoadedModel, settings: RewriteSettings, template: str, *, prompt: str, request: str) -> int:
    """New tokens a reply may run to: max(setting, 2 x prompt tokens + 32) (+ the FULL diagnosis), within
    what the model's context leaves after the request."""
    needed = 2 * _n_tokens(lm, prompt) + _PROMPT_GROWTH_TOKENS  # room for a rewrite of the whole prompt
    wanted = max(settings.max_new_tokens, needed)
    if template == "full":
        wanted += settings.diagnosis_tokens
    request_tokens = _n_tokens(lm, request)
    room = lm.context_length - request_tokens
    if room < min(wanted, needed):  # generating anyway would run past the context, silently
        raise ContextLengthError(
            f"the rewrite request is {request_tokens} tokens, and the model's context of {lm.context_length} leaves "
            f"{max(room, 0)} for the reply, fewer than the {needed} a rewritten prompt needs: shorten the prompt or "
            "the task description, or use a rewriter with a longer context"
        )
    return min(wanted, room)


def _n_tokens(lm: LoadedModel, text: str) -> int:
    return len(lm.tokenizer.encode(text, add_special_tokens=False))
