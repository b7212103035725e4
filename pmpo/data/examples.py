"""The three kinds of example PMPO scores, and the dataset that holds them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Union

from pmpo.errors import DataError
from pmpo.text.template import ExampleInput, Fields


@dataclass(frozen=True)
class Supervised:
    """An input and the reference output the model should produce."""

    input: str
    target: str
    aliases: tuple[str, ...] = ()
    # Named input fields that fill a template's {{variables}} (column order); empty: `input` is the one field.
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Preference:
    """An input, a preferred output and one or more rejected outputs."""

    input: str
    chosen: str
    rejected: tuple[str, ...]
    # Named input fields that fill a template's {{variables}} (column order); empty: `input` is the one field.
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MultipleChoice:
    """An input, its answer options and the correct one; scored as CE or as preference."""

    input: str
    options: tuple[str, ...]
    target: str
    aliases: tuple[str, ...] = ()
    # Named input fields that fill a template's {{variables}} (column order); empty: `input` is the one field.
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.target not in self.options:
            raise DataError(f"target {self.target!r} is not one of the options {list(self.options)!r}")


Example = Union[Supervised, Preference, MultipleChoice]


@dataclass(frozen=True)
class Dataset:
    """A named, ordered collection of examples with a content fingerprint."""

    name: str
    examples: tuple[Example, ...]
    description: str = ""
    # The prompt the task starts from when the user gives none (e.g. BIG-bench's task_prefix).
    default_prompt: str = ""
    fingerprint: str = field(default="", compare=False)
    # Where the examples came from, for error messages: the source (file, hub name) and each example's row in it
    # (1-based; default 1..n). Kept through subsets, so a training example is named by its row in the file.
    origin: str = field(default="", compare=False)
    rows: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError(f"dataset {self.name!r} is empty: it needs at least one example")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.examples))
        if not self.rows:
            object.__setattr__(self, "rows", tuple(range(1, len(self.examples) + 1)))

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int], name: str | None = None) -> "Dataset":
        """Return the examples at `indices` as a new dataset (fingerprint recomputed)."""
        return Dataset(
            name=name or self.name,
            examples=tuple(self.examples[i] for i in indices),
            description=self.description,
            default_prompt=self.default_prompt,
            origin=self.origin,
            rows=tuple(self.rows[i] for i in indices),
        )

    def where(self, index: int) -> str:
        """Where example `index` came from, as an error message names it: `data.jsonl, row 12`."""
        return f"{self.origin or self.name}, row {self.rows[index]}"


def example_input(example: Example) -> ExampleInput:
    """What a rendering takes from the example: its named fields, or its one input text."""
    return Fields(example.fields) if example.fields else example.input


def example_key(example: Example) -> str:
    """A stable content hash of one example (used to memoise its loss)."""
    payload = {"kind": type(example).__name__, **asdict(example)}
    if not payload["fields"]:  # single-input examples keep the hash they had before fields existed
        del payload["fields"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(examples: tuple[Example, ...] | list[Example]) -> str:
    """A stable content hash of an ordered list of examples."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example_key(example).encode())
    return digest.hexdigest()[:16]
