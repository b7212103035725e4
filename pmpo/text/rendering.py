"""Where the prompt goes in the model's input, the same way for scoring, rewriting and evaluation.

A prompt is rendered once into a *shell*: the whole text with a slot where each example's text goes. An
instruction without variables is placed as `placement` says (system message, user message or plain text) and
its one slot takes the example's input. A text template (`{{variables}}`, pmpo.text.template) is the user message
and each variable is a slot; a chat prompt is rendered with the model's chat template, the reply after it.

A context is split into a *prefix* (everything before the first slot; shared by every example of one
candidate, so its KV cache can be reused) and a *middle* (the rest, slots filled, up to where the model's
reply starts). The reference output follows the middle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from pmpo.text.template import VARIABLE, ExampleInput, chat_messages, input_text, value_of

_SLOT = "\x00PMPO_SLOT:{}\x00"
_SLOTS = re.compile("\x00PMPO_SLOT:([^\x00]*)\x00")
_WHOLE_INPUT = ""  # the slot that takes the example's whole input (a prompt without variables)


@dataclass(frozen=True)
class Context:
    """Text before the reply, split at the start of the first example text."""

    prefix: str
    middle: str

    @property
    def text(self) -> str:
        """The whole context."""
        return self.prefix + self.middle


@dataclass(frozen=True)
class Shell:
    """A rendered prompt with its slots: `parts[i]` comes before `slots[i]`, the last part after them all."""

    parts: tuple[str, ...]
    slots: tuple[str, ...]  # the variable each slot takes; "" the example's whole input

    def fill(self, example_input: ExampleInput) -> Context:
        """The context of one example: its text in every slot."""
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:]):
            out.append(_slot_text(example_input, slot))
            out.append(part)
        return Context(prefix=self.parts[0], middle="".join(out[1:]))


def shell(tokenizer: Any, placement: str, prompt: str) -> Shell:
    """Render `prompt` once, with a slot where each example's text goes."""
    text = _with_slots(tokenizer, placement, prompt)
    pieces = _SLOTS.split(text)  # [part, slot, part, slot, ..., part]
    return Shell(parts=tuple(pieces[0::2]), slots=tuple(pieces[1::2]))


def render(tokenizer: Any, placement: str, prompt: str, input_text: ExampleInput) -> Context:
    """Place `prompt` and the example's input (one text, or fields that fill the template's variables)."""
    return shell(tokenizer, placement, prompt).fill(input_text)


def render_many(tokenizer: Any, placement: str, prompt: str, inputs: Sequence[ExampleInput]) -> list[str]:
    """The whole context text of each input under one prompt, rendering the template once."""
    # A chat template costs ~0.4 ms per render; the shell is rendered once and every input goes into it.
    frame = shell(tokenizer, placement, prompt)
    return [frame.fill(inp).text for inp in inputs]


def chat_request(tokenizer: Any, message: str) -> str:
    """A single user message, ready for the model's reply (used for rewrite requests)."""
    if getattr(tokenizer, "chat_template", None):
        return _chat(tokenizer, [{"role": "user", "content": message}])
    return f"{message}\n"


def _slot_text(example_input: ExampleInput, slot: str) -> str:
    if slot == _WHOLE_INPUT:
        return input_text(example_input)
    if isinstance(example_input, str) and not example_input:  # the prompt alone (length checks, the prefix)
        return ""
    return value_of(example_input, slot)


def _with_slots(tokenizer: Any, placement: str, prompt: str) -> str:
    """The rendered prompt with slot markers where example text goes."""
    messages = chat_messages(prompt)
    if messages is not None:
        chat = [{"role": m.role, "content": _slotted(m.content)} for m in messages]
        if not any(VARIABLE.search(m.content) for m in messages):  # nothing to fill: the input is the user's turn
            chat.append({"role": "user", "content": _SLOT.format(_WHOLE_INPUT)})
        return _chat_or_plain(tokenizer, chat)
    if VARIABLE.search(prompt):  # a text template is what the application sends as the user message
        if placement == "plain":
            return f"{_slotted(prompt)}\n"
        return _chat(tokenizer, [{"role": "user", "content": _slotted(prompt)}])
    slot = _SLOT.format(_WHOLE_INPUT)
    if placement == "plain":
        return (f"{prompt}\n\n" if prompt else "") + f"{slot}\n"
    if placement == "system":
        return _chat(tokenizer, [{"role": "system", "content": prompt}, {"role": "user", "content": slot}])
    if placement == "user":
        lead = f"{prompt}\n\n" if prompt else ""
        return _chat(tokenizer, [{"role": "user", "content": lead + slot}])
    raise ValueError(f"placement must be system, user or plain, not {placement!r}")


def _slotted(text: str) -> str:
    return VARIABLE.sub(lambda m: _SLOT.format(m.group(1)), text)


def _chat_or_plain(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return _chat(tokenizer, messages)
    return "".join(f"{m['content']}\n\n" for m in messages[:-1]) + f"{messages[-1]['content']}\n"


def _chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def placed(prompt: str, placement: str) -> str:
    """Where `prompt` goes, as whoever deploys it must render it the same way: `chat` (its own messages), `user`
    (a template is the user message; `plain` for a model without chat template), else the model's resolved
    `placement` of an instruction (`system`, `user` or `plain`)."""
    if chat_messages(prompt) is not None:
        return "chat"
    if VARIABLE.search(prompt):
        return "plain" if placement == "plain" else "user"
    return placement
