"""Held-out evaluation: mean loss, accuracy by generation, and multiple-choice accuracy by option likelihood.

Whether a generated answer is right is `pmpo.evaluation.matching`'s business.

Each number keeps its per-example values, so `compare` can put a paired bootstrap interval on the change
from the initial to the final prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pmpo.data.examples import Dataset, MultipleChoice, example_input
from pmpo.errors import PmpoError
from pmpo.evaluation.matching import Match, is_correct, references, task_labels
from pmpo.evaluation.stats import Interval, paired_bootstrap
from pmpo.models.loading import LoadedModel, TextSide
from pmpo.scoring.loss import BaseScorer, Scorer
from pmpo.text.rendering import render_many


@dataclass(frozen=True)
class Evaluation:
    """How one prompt does on a held-out set."""

    prompt: str
    n_examples: int
    loss: float  # mean per-example loss, the training objective
    loss_per_token: float
    accuracy: float | None  # generated answer matches the reference (`Match`; aliases count)
    option_accuracy: float | None  # multiple choice: the most likely option is the correct one (lm-eval `acc`)
    # multiple choice: the option most likely per byte is the correct one (lm-eval `acc_norm`): a long option
    # collects more negative log-likelihood for its length alone, which `acc` holds against it
    option_accuracy_norm: float | None = None
    example_losses: tuple[float, ...] = ()  # per example, in the dataset's order: `loss` is their mean
    example_correct: tuple[bool, ...] | None = None  # per example, when answers were generated
    example_option_correct: tuple[bool, ...] | None = None  # per multiple-choice example, in order
    example_option_correct_norm: tuple[bool, ...] | None = None
    # `example_losses` with the preference pairs at this prompt's best softening (pmpo.scoring.temperature), what
    # the promotion gate also compares; () where not recorded (an evaluation made by an older pmpo)
    example_tempered_losses: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvaluationDelta:
    """Final minus initial on the same held-out examples, each with a paired bootstrap interval (None: no data)."""

    loss: Interval | None  # None: an evaluation without per-example losses (made by an older pmpo)
    accuracy: Interval | None
    option_accuracy: Interval | None
    option_accuracy_norm: Interval | None


@dataclass(frozen=True)
class OptionAccuracy:
    """Multiple-choice hits of one prompt, by summed and by per-byte log-likelihood."""

    correct: tuple[bool, ...]  # lm-eval `acc`
    correct_norm: tuple[bool, ...]  # lm-eval `acc_norm`


def option_hits(scorer: BaseScorer, prompt: str, examples: Sequence[MultipleChoice]) -> OptionAccuracy:
    """Per example: is the correct option the most likely one, in total (`acc`) and per byte (`acc_norm`)?

    One scorer pass serves both (lm-evaluation-harness: `acc` takes the argmax of the summed log-likelihood,
    `acc_norm` of the log-likelihood divided by the option's length, here in UTF-8 bytes).
    """
    pairs = [(example_input(e), o) for e in examples for o in e.options]
    nll, _ = scorer.completions(prompt, pairs)
    correct, correct_norm, at = [], [], 0
    for e in examples:
        option_nll = nll[at : at + len(e.options)]  # [n_options]
        n_bytes = np.array([max(len(o.encode("utf-8")), 1) for o in e.options], dtype=np.float64)
        correct.append(e.options[int(np.argmin(option_nll))] == e.target)
        correct_norm.append(e.options[int(np.argmin(option_nll / n_bytes))] == e.target)
        at += len(e.options)
    return OptionAccuracy(tuple(correct), tuple(correct_norm))


# Tokens a greedy answer may run past the longest reference: chat models open with a lead-in ("The answer
# is", "The sentiment of this review is") of about 5-10 tokens before the answer itself.
ANSWER_MARGIN = 12


def answer_budget(lm: LoadedModel | TextSide, dataset: Dataset, margin: int = ANSWER_MARGIN) -> int:
    """New tokens a greedy answer gets: the longest reference (aliases included) in tokens, plus `margin`."""
    refs = {r for e in dataset.examples for r in references(e)}
    longest = max((len(lm.tokenizer.encode(r, add_special_tokens=False)) for r in refs), default=0)
    return longest + margin


def evaluate(
    lm: LoadedModel | TextSide,
    prompt: str,
    dataset: Dataset,
    *,
    scorer: BaseScorer | None = None,
    generate: bool = True,
    max_new_tokens: int | None = None,
    match: Match = "contains",
) -> Evaluation:
    """Loss and accuracy of `prompt` on `dataset` (normally the held-out split).

    `max_new_tokens`: None follows the longest reference (`answer_budget`). Answers come from the scorer's
    decoder: the in-process model, or the server of a remote scorer (`lm` is then its text side).
    """
    scorer = scorer or Scorer(lm)
    matrix = scorer.loss_matrix([prompt], dataset.examples)
    correct = None
    if generate:
        decoder = scorer.decoder()
        if decoder is None:
            raise PmpoError("eval.generate needs a model that can decode: this scorer has no weights and no server")
        contexts = render_many(lm.tokenizer, lm.placement, prompt, [example_input(e) for e in dataset.examples])
        budget = max_new_tokens if max_new_tokens is not None else answer_budget(lm, dataset)
        outputs = decoder.greedy(contexts, budget)
        labels = task_labels(dataset)
        correct = tuple(bool(is_correct(o, e, match, labels)) for o, e in zip(outputs, dataset.examples))
    mc = [e for e in dataset.examples if isinstance(e, MultipleChoice)]
    hits = option_hits(scorer, prompt, mc) if mc else None
    return Evaluation(
        prompt=prompt,
        n_examples=len(dataset),
        loss=float(matrix.prompt_loss()[0]),
        loss_per_token=float(matrix.prompt_loss_per_token()[0]),
        accuracy=_share(correct),
        option_accuracy=_share(hits.correct if hits else None),
        option_accuracy_norm=_share(hits.correct_norm if hits else None),
        example_losses=tuple(float(x) for x in matrix.loss[0]),
        example_correct=correct,
        example_option_correct=hits.correct if hits else None,
        example_option_correct_norm=hits.correct_norm if hits else None,
        example_tempered_losses=() if matrix.tempered is None else tuple(float(x) for x in matrix.tempered[0]),
    )


def compare(initial: Evaluation, final: Evaluation, *, seed: int = 0) -> EvaluationDelta:
    """Final minus initial for loss and every accuracy, with paired bootstrap 95% intervals."""
    if initial.n_examples != final.n_examples:
        raise PmpoError(
            f"compare needs both prompts scored on the same examples, not {initial.n_examples} and {final.n_examples}"
        )

    def delta(before: Sequence[float] | None, after: Sequence[float] | None) -> Interval | None:
        if not before or not after or len(before) != len(after):
            return None
        return paired_bootstrap([float(x) for x in before], [float(x) for x in after], seed=seed)

    return EvaluationDelta(
        loss=delta(initial.example_losses, final.example_losses),
        accuracy=delta(initial.example_correct, final.example_correct),
        option_accuracy=delta(initial.example_option_correct, final.example_option_correct),
        option_accuracy_norm=delta(initial.example_option_correct_norm, final.example_option_correct_norm),
    )


def _share(hits: Sequence[bool] | None) -> float | None:
    return None if hits is None else float(np.mean(hits))
