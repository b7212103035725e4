"""Held-out evaluation: mean loss, accuracy by generation, and multiple-choice accuracy by option likelihood."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from pmpo.data.examples import Dataset, Example, MultipleChoice, Preference
from pmpo.generation import greedy
from pmpo.loss import Scorer
from pmpo.models import LoadedModel
from pmpo.encoding import encode


@dataclass(frozen=True)
class Evaluation:
    """How one prompt does on a held-out set."""

    prompt: str
    n_examples: int
    loss: float  # mean per-example loss, the training objective
    loss_per_token: float
    accuracy: float | None  # generated answer matches the reference (`Match`; aliases count)
    option_accuracy: float | None  # multiple choice: the most likely option is the correct one


# exact: the reply's first line, normalised, is a reference (SQuAD/lm-eval exact match). contains: a reference
# appears as whole words in the reply and no other label of the task does (APE's lenient execution metric,
# guarded so that a reply naming every label is not right): chat models answer "The review is positive."
Match = Literal["exact", "contains"]
# A task with at most this many distinct targets is a classification task: its targets are its labels.
MAX_LABELS = 20

_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_ANSWER_LEAD = re.compile(r"^(the\s+)?(final\s+)?answer\s*(is)?\s*[:\-]?\s*", re.IGNORECASE)


def extract_answer(output: str) -> str:
    """The answer part of a generated reply: its first non-empty line, without an 'Answer:' lead."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    return _ANSWER_LEAD.sub("", line)


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, articles and extra spaces (SQuAD-style normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def references(example: Example) -> list[str]:
    """Accepted answers: the target (or chosen output) and its aliases."""
    if isinstance(example, Preference):
        return [example.chosen]
    return [example.target, *example.aliases]


def is_correct(output: str, example: Example, match: Match = "exact", labels: Sequence[str] = ()) -> bool:
    """Whether the reply gives a reference answer; `labels`: the task's answers, for the `contains` guard."""
    refs = {normalize(r) for r in references(example)}
    if match == "exact":
        return normalize(extract_answer(output)) in refs
    words = f" {normalize(output)} "
    others = {normalize(o) for o in (example.options if isinstance(example, MultipleChoice) else labels)} - refs
    return any(f" {r} " in words for r in refs if r) and not any(f" {o} " in words for o in others if o)


def task_labels(dataset: Dataset) -> tuple[str, ...]:
    """The distinct targets of a classification task (at most MAX_LABELS of them), else none.

    Numbers are left out: a worked answer names other numbers on its way to the right one.
    """
    targets = {t for e in dataset.examples if (t := getattr(e, "target", None)) is not None}
    if len(targets) > MAX_LABELS:
        return ()
    return tuple(sorted(t for t in targets if not _NUMBER.fullmatch(t.strip())))


def option_accuracy(scorer: Scorer, prompt: str, examples: list[MultipleChoice]) -> float:
    """Share of examples whose correct option has the highest summed log-likelihood (lm-eval-harness `acc`)."""
    pairs = [(e.input, o) for e in examples for o in e.options]
    nll, _ = scorer.completions(prompt, pairs)
    hits, at = 0, 0
    for e in examples:
        option_nll = nll[at : at + len(e.options)]
        hits += e.options[int(np.argmin(option_nll))] == e.target
        at += len(e.options)
    return hits / len(examples)


def evaluate(
    lm: LoadedModel,
    prompt: str,
    dataset: Dataset,
    *,
    scorer: Scorer | None = None,
    generate: bool = True,
    max_new_tokens: int = 16,
    match: Match = "contains",
) -> Evaluation:
    """Loss and accuracy of `prompt` on `dataset` (normally the held-out split)."""
    scorer = scorer or Scorer(lm)
    matrix = scorer.loss_matrix([prompt], dataset.examples)
    accuracy = None
    if generate:
        contexts = [encode(lm.tokenizer, lm.placement, prompt, e.input).ids for e in dataset.examples]
        outputs = greedy(lm, contexts, max_new_tokens=max_new_tokens)
        labels = task_labels(dataset)
        accuracy = float(np.mean([is_correct(o, e, match, labels) for o, e in zip(outputs, dataset.examples)]))
    mc = [e for e in dataset.examples if isinstance(e, MultipleChoice)]
    return Evaluation(
        prompt=prompt,
        n_examples=len(dataset),
        loss=float(matrix.prompt_loss()[0]),
        loss_per_token=float(matrix.prompt_loss_per_token()[0]),
        accuracy=accuracy,
        option_accuracy=option_accuracy(scorer, prompt, mc) if mc else None,
    )
