"""Rewrite requests (the message each hard example turns into): the FULL and SHORT templates and their parts.

FULL, close to the paper's, is for capable models: task description, the hard example with its expected answer
and what the model now prefers on it (`pmpo.rewriting.diagnosis`), the masking table (see `pmpo.masking.analysis`;
left out when masking is off), the current prompt and edit strategies, and it asks first for a short diagnosis of
why the instruction fails. SHORT is a fill-in form for small models that cannot follow a long request: it ends
inside an opened `<prompt>` tag so the model only has to write the new instruction.
"""

from __future__ import annotations

from typing import Sequence

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised
from pmpo.loop.result import SegmentEffect
from pmpo.masking.analysis import masking_table, verdict
from pmpo.rewriting.diagnosis import Preferred
from pmpo.text.template import variables

# Long example texts are cut in the request: the rewriter needs the gist of the example, and a small
# model's attention (and context) is better spent on the instruction it is rewriting.
_MAX_EXAMPLE_CHARS = 1200
_MAX_ANSWER_CHARS = 400

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
    """ "full" or "short": the setting itself, or by model size when it is "auto"."""
    return by_size(setting, n_params, small_model_params, small="short", large="full", what="rewrite template")


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
    return FULL_VARIABLES_SECTION.format(
        names=_braced(names), are="are" if many else "is", each="each" if many else "it"
    )


def _short_keep(prompt: str) -> str:
    """The SHORT form's line naming the variables the new instruction must keep verbatim."""
    names = variables(prompt)
    return f"Keep exactly: {_braced(names)}\n" if names else ""
