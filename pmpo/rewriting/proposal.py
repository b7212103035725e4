"""Rewrite proposal (the paper's steps 3 and 4): pick the hard examples (the k = 3 highest-loss training
examples under the current prompt), and for each one ask the rewriter model for n = 4 sampled variants.

The request shows the task description, the hard example with its expected answer, the masking table
(see `pmpo.masking.units`; left out when masking is off), the current prompt and edit strategies; each variant
comes back inside `<prompt>...</prompt>`. Two templates: FULL, close to the paper's, for capable models:
it also shows what the model now prefers on the example (`pmpo.rewriting.diagnosis`) and asks first for a short
diagnosis of why the instruction fails; and SHORT, a fill-in form for small models that cannot follow a
long request: it ends inside an opened `<prompt>` tag so the model only has to write the new
instruction. Replies are parsed defensively (`pmpo.rewriting.replies`) and the unusable ones are counted by reason;
a reply cut off before its instruction ended ("unclosed") is one of them, so the token budget grows with
the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised
from pmpo.rewriting.diagnosis import Preferred, preferred_answer
from pmpo.errors import ContextLengthError
from pmpo.models.generation import sample
from pmpo.scoring.loss import Scorer
from pmpo.models.loading import LoadedModel
from pmpo.text.rendering import chat_request
from pmpo.rewriting.backends import Rewriter, as_rewriter, local_model
# Reply parsing lives in pmpo.rewriting.replies; its public names are re-exported here, where callers look for them.
from pmpo.rewriting.replies import REJECT_REASONS, UnclosedPromptError, filter_variants, parse_prompt, short_reply_cut_off  # noqa: F401
from pmpo.rewriting.replies import short_reply_unended
from pmpo.loop.result import SegmentEffect
from pmpo.masking.units import masking_table, verdict
from pmpo.text.template import variables
# The settings live in pmpo.rewriting.settings; their names are re-exported here, where callers look for them.
from pmpo.rewriting.settings import RewriteSettings, Template  # noqa: F401

# Long example texts are cut in the request: the rewriter needs the gist of the example, and a small
# model's attention (and context) is better spent on the instruction it is rewriting.
_MAX_EXAMPLE_CHARS = 1200
_MAX_ANSWER_CHARS = 400
# A rewrite may restate the whole prompt with edits: twice its tokens plus room for a short prompt to grow.
_PROMPT_GROWTH_TOKENS = 32


@dataclass(frozen=True)
class Proposal:
    """The variants one rewrite request produced, and how many replies were dropped, by reason."""

    variants: tuple[str, ...]
    rejected: dict[str, int]  # every reason in REJECT_REASONS, zero counts included
    request: str  # the request message (before any chat template)


FULL_TEMPLATE = """\
You are improving the instruction (system prompt) that a language model follows for a task.

Task: {task_description}

Current instruction:
{prompt}
{variables_section}
An example the model finds hard under this instruction:
{example}

{table_section}Ways to improve the instruction:
- Clarify the output format: say exactly what the answer looks like.
- Add a constraint or piece of knowledge the hard example shows is missing; remove one that misleads.
- Add reasoning steps when the task needs them, e.g. work through the problem, then give the answer.
- Rephrase ambiguous parts so they can be read only one way.
- Remove redundancy: a short, direct instruction usually works best.

First, in one or two sentences, explain why the current instruction leads the model away from the \
expected answer on this example. Then write one improved instruction inside <prompt></prompt> tags. It \
must work for every input of the task, not only this example, so do not copy the example or its answer \
into it."""

# A template's variables are filled by the application (`prompt.format(review=...)`): a rewrite without them
# cannot be used, so the request names them (such replies are rejected as "variables" anyway).
FULL_VARIABLES_SECTION = """\
The instruction is a template: {names} {are} replaced by each example's text. Keep {each} exactly as written \
(double braces included), once, in the improved instruction.
"""

FULL_TABLE_SECTION = """\
Effect of each part of the current instruction. dL is the model's loss on the expected answers without \
the part minus with it: positive means the part helps (keep it), negative means it hurts or is redundant \
(rewrite or remove it).
{table}

"""

# A few-shot fill-in form: the demonstrations carry the edit strategies (say the output format, drop the
# weak part, reason step by step) because a small model copies a pattern far better than it follows a
# list of advice. Their tasks are unlike the usual benchmark tasks so that copying them verbatim is rare.
SHORT_TEMPLATE = """\
Improve the instruction for each task.

Task: Translate an English word into French.
Example: dog
Correct answer: chien
Old instruction: Translate. Think hard.
Good part: "Translate."
Weak part: "Think hard."
New instruction: <prompt>Translate the English word into French. Reply with the French word only.</prompt>

Task: Decide whether a statement about animals is true.
Example: Cats can fly.
Correct answer: false
Old instruction: Is it right?
Weak part: "Is it right?"
New instruction: <prompt>Decide whether the statement is true or false. Answer with one word: true or false.</prompt>

Task: Solve short arithmetic word problems.
Example: Tom has 3 apples and buys 4 more. How many apples does he have?
Correct answer: 7
Old instruction: Answer.
New instruction: <prompt>Solve the word problem step by step, then give the final answer as a number.</prompt>

Task: {task_description}
Example: {example}
Old instruction: {prompt}
{hints}New instruction: <prompt>"""


def by_size(setting: str, n_params: int | None, small_model_params: int, *, small: str, large: str, what: str) -> str:
    """`small` or `large`: the setting itself, or by the model's size when it is "auto" (one rule for every
    choice that follows the rewriter's size: the template, the units). An unknown size (a remote rewriter)
    counts as large: a served or hosted model is almost always far past the small-model threshold."""
    if setting in (small, large):
        return setting
    if setting != "auto":
        raise ValueError(f"{what} must be auto, {large} or {small}, not {setting!r}")
    return small if n_params is not None and n_params < small_model_params else large


def choose_template(setting: str, n_params: int | None, small_model_params: int) -> str:
    """"full" or "short": the setting itself, or by model size when it is "auto"."""
    return by_size(setting, n_params, small_model_params, small="short", large="full", what="rewrite template")


def hard_examples(example_losses: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest-loss examples, highest first; ties go to the lower index."""
    order = sorted(range(len(example_losses)), key=lambda i: (-float(example_losses[i]), i))
    return order[: max(k, 0)]


def expected_answer(example: Example) -> str:
    """The output the prompt should lead the model to: the target, or the chosen output."""
    if isinstance(example, (Supervised, MultipleChoice)):
        return example.target
    if isinstance(example, Preference):
        return example.chosen
    raise TypeError(f"not an example: {example!r}")


def build_request(
    template: str,
    *,
    task_description: str,
    example: Example,
    prompt: str,
    effects: Sequence[SegmentEffect],
    preferred: Preferred | None = None,
) -> str:
    """The rewrite request message for one hard example, in the FULL or SHORT template.

    No `effects` (masking off, or a one-unit prompt) leaves the masking section out; `preferred` (FULL
    only) is what the model now answers or ranks first on the example.
    """
    task = task_description.strip() or "(no description given; infer it from the example)"
    if template == "full":
        return FULL_TEMPLATE.format(
            task_description=task,
            prompt=prompt.strip() or "(empty)",
            example=_example_block(example, preferred),
            table_section=FULL_TABLE_SECTION.format(table=masking_table(effects)) if effects else "",
            variables_section=_variables_section(prompt),
        )
    if template == "short":
        return SHORT_TEMPLATE.format(
            task_description=task,
            example=_example_line(example),
            prompt=" ".join(prompt.split()) or "(empty)",
            hints=_short_hints(effects) + _short_keep(prompt),  # ends in a newline when not empty
        )
    raise ValueError(f"rewrite template must be full or short, not {template!r}")


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
    scorer: Scorer | None = None,
    scored_prompt: str | None = None,
) -> Proposal:
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
        template, task_description=task_description, example=example, prompt=prompt, effects=effects,
        preferred=preferred,
    )  # fmt: skip
    opened = template == "short"  # the SHORT form ends inside an opened <prompt> tag
    if lm is None:
        replies, cut_off = _chat_replies(rewriter, message, settings, template, prompt, seed, scorer, opened)
    else:
        replies, cut_off = _local_replies(lm, message, settings, template, prompt, seed, opened)
    variants, rejected = filter_variants(
        replies, current=prompt, seen=seen, max_chars=settings.max_prompt_chars, opened=opened, cut_off=cut_off,
        variables=variables(prompt),
    )  # fmt: skip
    return Proposal(variants=tuple(variants), rejected=rejected, request=message)


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
    scorer: Scorer | None,
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
        message, n=settings.n_variants, temperature=settings.temperature, top_p=settings.top_p, seed=seed,
        max_tokens=budget, stop=("</prompt>",),
    )  # fmt: skip
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


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _example_block(example: Example, preferred: Preferred | None = None) -> str:
    """The hard example for the FULL template: input, options, expected answer, what the model prefers."""
    lines = [f"Input: {_clip(example.input, _MAX_EXAMPLE_CHARS)}"]
    if isinstance(example, MultipleChoice):
        lines.append("Options: " + " | ".join(_clip(o, _MAX_ANSWER_CHARS) for o in example.options))
    lines.append(f"Expected answer: {_clip(expected_answer(example), _MAX_ANSWER_CHARS)}")
    if isinstance(example, Preference) and example.rejected and preferred is None:
        lines.append(f"A worse answer (should be avoided): {_clip(example.rejected[0], _MAX_ANSWER_CHARS)}")
    if preferred is not None:
        lines.append(_preferred_line(preferred))
    return "\n".join(lines)


def _preferred_line(preferred: Preferred) -> str:
    text = _clip(preferred.text, _MAX_ANSWER_CHARS) or "(nothing)"
    if preferred.kind == "greedy":
        return f"The model's own answer under the current instruction: {text}"
    rank = "above" if preferred.above_expected else "below"
    return f"The wrong answer the model ranks highest under the current instruction ({rank} the expected one): {text}"


def _example_line(example: Example) -> str:
    """The hard example for the SHORT template, in as few words as possible."""
    parts = [_clip(example.input, _MAX_EXAMPLE_CHARS)]
    if isinstance(example, MultipleChoice):
        parts.append("Options: " + ", ".join(_clip(o, _MAX_ANSWER_CHARS) for o in example.options))
    parts.append(f"Correct answer: {_clip(expected_answer(example), _MAX_ANSWER_CHARS)}")
    if isinstance(example, Preference) and example.rejected:
        parts.append(f"Bad answer: {_clip(example.rejected[0], _MAX_ANSWER_CHARS)}")
    return "\n".join(parts)


def _short_hints(effects: Sequence[SegmentEffect]) -> str:
    """The masking table boiled down to which parts to keep and which to drop or fix."""
    keep = " ".join(f'"{_clip(e.text, 80)}"' for e in effects if verdict(e.delta_loss) == "helps")
    drop = " ".join(f'"{_clip(e.text, 80)}"' for e in effects if verdict(e.delta_loss) == "hurts")
    return (f"Good part: {keep}\n" if keep else "") + (f"Weak part: {drop}\n" if drop else "")


def _braced(names: Sequence[str]) -> str:
    return ", ".join("{{" + name + "}}" for name in names)


def _variables_section(prompt: str) -> str:
    """The FULL request's note on the template's variables ("" for a prompt without any)."""
    names = variables(prompt)
    if not names:
        return ""
    many = len(names) > 1
    return FULL_VARIABLES_SECTION.format(names=_braced(names), are="are" if many else "is", each="each" if many else "it")


def _short_keep(prompt: str) -> str:
    """The SHORT form's line naming the variables the new instruction must keep verbatim."""
    names = variables(prompt)
    return f"Keep exactly: {_braced(names)}\n" if names else ""
