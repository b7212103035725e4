"""Demonstrations in a prompt: training examples written as the task's own input and reference, placed in the
instruction text, and the rule that finds which examples a prompt shows (so none is scored with itself in it).

A demonstration is the example's input as the model sees it (the input text, or a template's variable part filled
with the example's fields) followed by its reference. Demonstrations go in the optimised text: at its end for an
instruction, before its variable part for a template (the part from the line of the first `{{variable}}` on), so a
template keeps its variables and the example to answer still comes last.
"""

from __future__ import annotations

import re
from typing import Sequence

from pmpo.data.examples import Example, Preference, example_input
from pmpo.text.template import (
    VARIABLE,
    TemplateError,
    chat_messages,
    editable,
    has_variable,
    input_text,
    value_of,
    with_editable,
)

HEADING = "Example {}:"
_HEADING_LINE = re.compile(r"^" + re.escape(HEADING).replace(r"\{\}", r"\d+") + r"[ \t]*$", re.MULTILINE)


def reference(example: Example) -> str:
    """The output a demonstration shows: the target, or the chosen output of a preference pair."""
    return example.chosen if isinstance(example, Preference) else example.target


def variable_part(text: str) -> str | None:
    """A template's part from the start of the line holding its first variable; None without variables."""
    found = VARIABLE.search(text)
    if found is None:
        return None
    return text[text.rfind("\n", 0, found.start()) + 1 :]


def demonstration(example: Example, form: str | None = None) -> str:
    """The example as the task's own input and output: the input (or `form`, a template's variable part, filled
    with its fields), then its reference, after a space where the input ends in a colon ("Sentiment: positive")."""
    inp = example_input(example)
    shown = input_text(inp) if form is None else VARIABLE.sub(lambda m: value_of(inp, m.group(1)), form)
    shown = shown.rstrip()
    return shown + (" " if shown.endswith(":") else "\n") + reference(example)


def blocks(text: str) -> list[tuple[int, int]]:
    """Character spans of the demonstrations `with_demonstrations` wrote into `text`: each from its heading line to
    the next heading, the last to the template's variable part or the text's end (trailing whitespace left out).

    Masking removes whole units; a unit cut inside a demonstration leaves an input without its answer (or an answer
    without its input), which teaches the model a wrong pairing.
    """
    tail = variable_part(text)
    end = len(text) - len(tail) if tail is not None else len(text)
    starts = [m.start() for m in _HEADING_LINE.finditer(text, 0, end)]
    return [(a, a + len(text[a:b].rstrip())) for a, b in zip(starts, [*starts[1:], end])]


def usable(example: Example, form: str | None = None) -> bool:
    """Whether the example can be a demonstration: it fills the form, and no text of it reads as a variable (it
    would add one to the template)."""
    try:
        text = demonstration(example, form)
    except TemplateError:
        return False
    return not has_variable(text)


def with_demonstrations(prompt: str, examples: Sequence[Example], message: int | None = None) -> str:
    """`prompt` with the examples as numbered demonstrations in its optimised text (`message`: a chat prompt's
    optimised message, as `OptimizerConfig.chat_message`)."""
    text = editable(prompt, message)
    form = input_form(prompt)
    block = "\n\n".join(f"{HEADING.format(i)}\n{demonstration(e, form)}" for i, e in enumerate(examples, start=1))
    tail = variable_part(text)
    if tail is None:  # an instruction: the input follows the prompt, so the demonstrations end it
        new = f"{text.rstrip()}\n\n{block}" if text.strip() else block
    else:
        head = text[: len(text) - len(tail)]
        new = f"{head.rstrip()}\n\n{block}\n\n{tail}" if head.strip() else f"{block}\n\n{tail}"
    return with_editable(prompt, new, message)


def input_form(prompt: str) -> str | None:
    """How an example's input reads under `prompt`: the variable part of its first templated text; None (the input
    text itself) for an instruction without variables."""
    for text in texts(prompt):
        part = variable_part(text)
        if part is not None:
            return part
    return None


def texts(prompt: str) -> list[str]:
    """The texts of a prompt: itself, or each message's content."""
    messages = chat_messages(prompt)
    return [prompt] if messages is None else [m.content for m in messages]


def shown(prompt: str, examples: Sequence[Example]) -> list[int]:
    """Indices of the examples `prompt` shows as demonstrations: whose demonstration text is in one of its texts.

    By text, not by where a prompt came from: a rewrite or a removal that keeps a demonstration still shows it.
    """
    where = texts(prompt)
    forms = {None, input_form(prompt)}
    found = []
    for i, example in enumerate(examples):
        for form in forms:
            try:
                demo = demonstration(example, form)
            except TemplateError:
                continue
            if any(demo in text for text in where):
                found.append(i)
                break
    return found
