"""Prompts as teams store them: text templates with `{{variables}}` and chat prompts (lists of messages).

A prompt stays one `str` everywhere in the loop. Three forms:
- an instruction without variables: placed as today (pmpo.text.rendering), the example's input after it;
- a text template (`Review: {{review}}`): MLflow's double-brace syntax, filled from the example's fields;
- a chat prompt: the JSON list of `{"role", "content"}` messages (MLflow's chat format), variables in any of
  them. Only one message's text is optimised (the system message); `editable` / `with_editable` take it out
  of the prompt and put a new text back, so masking and rewriting see plain text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from pmpo.errors import DataError

# MLflow's own pattern (mlflow.prompt.constants.PROMPT_TEMPLATE_VARIABLE_PATTERN), so a variable we keep is one
# `prompt.format(**vars)` fills.
VARIABLE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\s*\}\}")
INPUT = "input"  # the field a single-input example fills


class TemplateError(DataError):
    """A template variable the example cannot fill, or a chat prompt that is not well formed."""


@dataclass(frozen=True, order=True)
class Fields:
    """An example's named input fields (they fill the template's variables), in column order."""

    items: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The field names."""
        return tuple(name for name, _ in self.items)

    @property
    def text(self) -> str:
        """The fields as `name: value` lines, for a prompt without variables and for rewrite requests."""
        return "\n".join(f"{name}: {value}" for name, value in self.items)

    def get(self, name: str) -> str | None:
        """The value of field `name`, None when the example has no such field."""
        return next((value for key, value in self.items if key == name), None)


ExampleInput = str | Fields  # what a (input, completion) pair carries: one text, or named fields


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


def variables(text: str) -> tuple[str, ...]:
    """The variable names in `text`, in order of first appearance."""
    return tuple(dict.fromkeys(m.group(1) for m in VARIABLE.finditer(text)))


def has_variable(text: str) -> bool:
    """Whether `text` holds a `{{variable}}`."""
    return VARIABLE.search(text) is not None


def value_of(example_input: ExampleInput, name: str) -> str:
    """The text that fills variable `name`; a missing field is an error naming both."""
    if isinstance(example_input, Fields):
        value = example_input.get(name)
        fields = ", ".join(example_input.names)
    else:
        value = example_input if name == INPUT else None
        fields = INPUT
    if value is None:
        raise TemplateError(
            f"the prompt's variable {{{{{name}}}}} has no field in the example (fields: {fields}); "
            f"map a column to it with --column {name}=<column> (in Python: load_dataset(..., variables=...))"
        )
    return value


def input_text(example_input: ExampleInput) -> str:
    """The example's input as one text (fields as `name: value` lines)."""
    return example_input.text if isinstance(example_input, Fields) else example_input


def chat_messages(prompt: str) -> tuple[Message, ...] | None:
    """The messages of a chat prompt (a JSON list of {role, content}); None for a text prompt."""
    if not prompt.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(prompt)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, list) or not parsed:
        return None
    if not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in parsed
    ):
        return None
    return tuple(Message(m["role"], m["content"]) for m in parsed)


def chat_prompt(messages: Sequence[Message] | Sequence[Mapping[str, str]]) -> str:
    """The one string form of a chat prompt (canonical JSON, so the same messages are the same candidate)."""
    items = [m if isinstance(m, Message) else Message(str(m["role"]), str(m["content"])) for m in messages]
    return json.dumps([{"role": m.role, "content": m.content} for m in items], ensure_ascii=False)


def normalized(prompt: str) -> str:
    """A chat prompt in its one string form (however its JSON was written); any other prompt unchanged."""
    messages = chat_messages(prompt)
    return prompt if messages is None else chat_prompt(messages)


def to_registry(prompt: str) -> str | list[dict[str, str]]:
    """What MLflow's `register_prompt(template=...)` takes: the text, or the list of messages."""
    messages = chat_messages(prompt)
    return prompt if messages is None else [{"role": m.role, "content": m.content} for m in messages]


def from_registry(template: str | list) -> str:
    """A registered template (text, or a list of messages) as a pmpo prompt string."""
    return template if isinstance(template, str) else chat_prompt(template)


def optimised_index(messages: Sequence[Message], message: int | None = None) -> int:
    """Which message's text the loop optimises: `message` (an index) when given, else the system message."""
    if message is not None:
        if not 0 <= message < len(messages):
            raise TemplateError(
                f"chat_message {message}: the chat prompt has {len(messages)} message(s), numbered from 0"
            )
        return message
    for i, message in enumerate(messages):
        if message.role == "system":
            return i
    raise TemplateError(
        "a chat prompt needs a system message to optimise (roles found: "
        + ", ".join(m.role for m in messages)
        + "); add one, even a short one"
    )


def editable(prompt: str, message: int | None = None) -> str:
    """The part of `prompt` that masking and rewriting work on: the prompt, or the text of its optimised message
    (`message`, an index; default the system message)."""
    messages = chat_messages(prompt)
    return prompt if messages is None else messages[optimised_index(messages, message)].content


def with_editable(prompt: str, text: str, message: int | None = None) -> str:
    """`prompt` with its editable part replaced by `text`; the other messages stay as they are."""
    messages = chat_messages(prompt)
    if messages is None:
        return text
    i = optimised_index(messages, message)
    return chat_prompt([*messages[:i], Message(messages[i].role, text), *messages[i + 1 :]])


def prompt_variables(prompt: str) -> tuple[str, ...]:
    """Every variable of a prompt: of the text, or of all messages of a chat prompt."""
    messages = chat_messages(prompt)
    if messages is None:
        return variables(prompt)
    return tuple(dict.fromkeys(v for m in messages for v in variables(m.content)))


def same_variables(candidate: str, required: Sequence[str]) -> bool:
    """Whether `candidate` holds exactly the `required` variables (none dropped, renamed or added)."""
    return set(variables(candidate)) == set(required)
