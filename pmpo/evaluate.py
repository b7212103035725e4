"""Held-out evaluation: mean loss, accuracy by generation, and multiple-choice accuracy by option likelihood."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from pmpo.data.examples import Dataset, Example, MultipleChoice, Preference
from pmpo.generation import greedy
from pmpo.loss import Scorer
from pmpo.models import LoadedModel
from pmpo.prompting import render


@dataclass(frozen=True)
class Evaluation:
    """How one prompt does on a held-out set."""

    prompt: str
    n_examples: int
    loss: float  # mean per-example loss, the training objective
    loss_per_token: float
    accuracy: float | None  # generated answer matches the reference (normalised exact match, aliases)
    option_accuracy: float | None  # multiple choice: the most likely option is the correct one


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


def is_correct(output: str, example: Example) -> bool:
    """Normalised exact match of the extracted answer against the references."""
    answer = normalize(extract_answer(output))
    return any(answer == normalize(ref) for ref in references(example))


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
) -> Evaluation:
    """Loss and accuracy of `prompt` on `dataset` (normally the held-out split)."""
    scorer = scorer or Scorer(lm)
    matrix = scorer.loss_matrix([prompt], dataset.examples)
    accuracy = None
    if generate:
        contexts = [render(lm.tokenizer, lm.placement, prompt, e.input).text for e in dataset.examples]
        outputs = greedy(lm, contexts, max_new_tokens=max_new_tokens)
        accuracy = float(np.mean([is_correct(o, e) for o, e in zip(outputs, dataset.examples)]))
    mc = [e for e in dataset.examples if isinstance(e, MultipleChoice)]
    return Evaluation(
        prompt=prompt,
        n_examples=len(dataset),
        loss=float(matrix.prompt_loss()[0]),
        loss_per_token=float(matrix.prompt_loss_per_token()[0]),
        accuracy=accuracy,
        option_accuracy=option_accuracy(scorer, prompt, mc) if mc else None,
    )
