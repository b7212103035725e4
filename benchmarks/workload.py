"""The PMPO-shaped workload of the loss benchmark: a task's 50 training examples and 13 candidate prompts.

Data: a BIG-bench sample from ../shared/data/bbh when it is there (object_counting by default), the built-in
sentiment task otherwise. Candidates: the incumbent (the task's own instruction), real rewrite variants from
`pmpo.rewriting.proposal` where asked for, then fixed edits of the incumbent (added/removed sentences, generic and
unrelated instructions), so a set holds near-ties as well as clearly worse prompts, as in an optimizer run.
The few-shot set puts the same instructions in front of a ~500-token 3-shot chain-of-thought block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pmpo.data import Dataset, load_dataset, split_dataset
from pmpo.data.examples import Example, MultipleChoice, Supervised

BBH_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bbh"
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


@dataclass(frozen=True)
class Workload:
    """What the benchmark scores."""

    source: str  # where the examples came from
    train: tuple[Example, ...]
    description: str
    zero_shot: tuple[str, ...]  # incumbent first
    few_shot: tuple[str, ...]
    variant_origin: str  # how the variants were made


def load_task(task: str, seed: int = 0) -> tuple[str, Dataset]:
    """(source, dataset): the BIG-bench sample `task` when present, else the built-in sentiment task."""
    path = BBH_DIR / f"{task}.jsonl"
    if path.is_file():
        return str(path.resolve()), load_dataset(path)
    return "builtin:sentiment (no ../shared/data/bbh here)", load_dataset("builtin:sentiment")


def incumbent_of(dataset: Dataset) -> str:
    """The task's own instruction: its prefix, or its description made into one."""
    if dataset.default_prompt:
        return dataset.default_prompt
    return (dataset.description.rstrip(".") + ".") if dataset.description else "Answer the question."


def edits(incumbent: str, description: str) -> list[str]:
    """Fixed variants of the incumbent, from near-ties to clearly unrelated instructions."""
    sentences = [s for s in re.split(r"(?<=[.!?:])\s+", incumbent) if s]
    return [
        f"{incumbent} Give only the final answer.",
        f"{incumbent} Answer with a single word or number.",
        f"You are a careful assistant. {incumbent}",
        f"{incumbent} Think carefully before answering.",
        " ".join(sentences[1:]) if len(sentences) > 1 else f"{incumbent} Be concise.",
        f"Task: {description.rstrip('.')}." if description else "Solve the task.",
        "Answer the question.",
        "You are a helpful assistant.",
        "",
        f"{incumbent} Reply in French.",
        "Write a short poem about the sea.",
        "Translate the user's message into German.",
    ]


def candidates(incumbent: str, description: str, rewrites: list[str], n: int) -> list[str]:
    """The incumbent, then rewrites, then fixed edits, without duplicates, `n` in all."""
    out: list[str] = []
    for prompt in [incumbent, *rewrites, *edits(incumbent, description)]:
        if prompt not in out:
            out.append(prompt)
    return out[:n]


def few_shot_block(dataset: Dataset, held_out: Dataset, shots: int = 3) -> str:
    """A BBH-style chain-of-thought block of `shots` held-out examples."""
    worked = [w for w in (_counting_rationale(e) for e in held_out.examples) if w]
    if len(worked) >= shots:  # object counting: rationales computed from the question itself
        chosen = sorted(worked, key=len, reverse=True)[:shots]
    else:
        chosen = [_plain_demo(e) for e in held_out.examples[:shots]]
    return "\n\n".join(chosen)


def build(task: str, n_candidates: int, n_examples: int, rewrites: list[str] | None = None) -> Workload:
    """The workload for `task` (or the built-in fallback)."""
    source, dataset = load_task(task)
    split = split_dataset(dataset, seed=0)
    train = split.train.examples[:n_examples]
    incumbent = incumbent_of(dataset)
    zero = candidates(incumbent, dataset.description, rewrites or [], n_candidates)
    block = few_shot_block(dataset, split.test)
    few = [f"{p}\n\n{block}" if p else block for p in zero]
    return Workload(
        source=source,
        train=tuple(train),
        description=dataset.description or dataset.name,
        zero_shot=tuple(zero),
        few_shot=tuple(few),
        variant_origin=f"{len(rewrites or [])} pmpo.rewriting.proposal variants + fixed edits",
    )


_ITEMS = re.compile(r"^I have (?P<items>.+)\. How many (?P<kind>[\w ]+) do I have\?$")


def _counting_rationale(example: Example) -> str | None:
    """BBH's object-counting chain of thought, when every listed item counts toward the answer."""
    if not isinstance(example, Supervised):
        return None
    match = _ITEMS.match(example.input)
    if not match:
        return None
    parts = re.split(r",\s*(?:and\s+)?|\s+and\s+", match["items"])
    lines, counts = [], []
    for part in parts:
        word, _, item = part.strip().partition(" ")
        count = 1 if word in ("a", "an") else (NUMBERS.index(word) if word in NUMBERS else None)
        if count is None or not item:
            return None
        lines.append(f"- {item} ({count})")
        counts.append(count)
    total = sum(counts)
    if total >= len(NUMBERS) or NUMBERS[total] != example.target:
        return None  # some items are not of the asked kind: the rationale would need world knowledge
    return (
        f"Q: {example.input}\nA: Let's think step by step.\n"
        f"We first identify the {match['kind']} on the list and include their quantity in parentheses:\n"
        + "\n".join(lines)
        + f"\nNow, let's add the numbers in parentheses: {' + '.join(map(str, counts))} = {total}. "
        f"So the answer is {example.target}."
    )


def _plain_demo(example: Example) -> str:
    options = f"\nOptions: {', '.join(example.options)}" if isinstance(example, MultipleChoice) else ""
    answer = getattr(example, "target", None) or getattr(example, "chosen", "")
    return f"Q: {example.input}{options}\nA: {answer}"
