"""Where the prompt goes in the model's input, the same way for scoring, rewriting and evaluation.

A context is split into a *prefix* (everything up to the example's input; it holds the prompt and is
shared by every example of one candidate, so its KV cache can be reused) and a *middle* (the input and the
template text up to where the model's reply starts). The reference output follows the middle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SENTINEL = "\x00PMPO_INPUT\x00"


@dataclass(frozen=True)
class Context:
    """Text before the reply, split at the start of the example's input."""

    prefix: str
    middle: str

    @property
    def text(self) -> str:
        """The whole context."""
        return self.prefix + self.middle


def render(tokenizer: Any, placement: str, prompt: str, input_text: str) -> Context:
    """Place `prompt` and `input_text` as `placement` says: system, user or plain."""
    if placement == "plain":
        prefix = f"{prompt}\n\n" if prompt else ""
        return Context(prefix=prefix, middle=f"{input_text}\n")
    if placement == "system":
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": _SENTINEL}]
        full = _chat(tokenizer, messages)
        before, after = full.split(_SENTINEL)
        return Context(prefix=before, middle=input_text + after)
    if placement == "user":
        lead = f"{prompt}\n\n" if prompt else ""
        full = _chat(tokenizer, [{"role": "user", "content": lead + _SENTINEL}])
        before, after = full.split(_SENTINEL)
        return Context(prefix=before, middle=input_text + after)
    raise ValueError(f"placement must be system, user or plain, not {placement!r}")


def render_many(tokenizer: Any, placement: str, prompt: str, inputs: list[str]) -> list[str]:
    """The whole context text of each input under one prompt, rendering the template once."""
    # `middle` is the input followed by template text that does not depend on it, so one rendering with an
    # empty input is a shell to put every input into (a chat template costs ~0.4 ms per render).
    shell = render(tokenizer, placement, prompt, "")
    return [shell.prefix + text + shell.middle for text in inputs]


def chat_request(tokenizer: Any, message: str) -> str:
    """A single user message, ready for the model's reply (used for rewrite requests)."""
    if getattr(tokenizer, "chat_template", None):
        return _chat(tokenizer, [{"role": "user", "content": message}])
    return f"{message}\n"


def _chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
