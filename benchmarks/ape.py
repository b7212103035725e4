"""An APE-style baseline (Zhou et al. 2022, "Large Language Models Are Human-Level Prompt Engineers").

Instructions are proposed with APE's forward generation template: the model reads five training
input-output pairs as a plain completion ending in "The instruction was" and writes the instruction.
Each request shows a random subset of the training demonstrations and samples several continuations;
proposals are parsed defensively (first line, first sentence, quotes stripped) and deduplicated until
`n` distinct candidates exist. The winner is the candidate with the best greedy accuracy on the training
set (the reply contains the reference and no other label, `pmpo.evaluation.matching.is_correct(..., "contains")`,
APE's lenient execution metric); ties go to the shorter instruction, then to the earlier proposal.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pmpo.data.examples import Dataset, Example, Preference
from pmpo.evaluation.matching import is_correct, task_labels
from pmpo.models.generation import greedy, sample
from pmpo.models.loading import LoadedModel
from pmpo.text.rendering import render

NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
HEADER = (
    "I gave a friend an instruction and {count} inputs. The friend read the instruction and wrote an output "
    "for every one of the inputs. Here are the input-output pairs:\n\n"
)
COMPLETE = "The instruction was"
# An instruction longer than this is the model rambling on, not stating a rule.
MAX_WORDS = 60
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’]?\s")
_QUOTES = "\"'`“”‘’"


class NoInstruction(ValueError):
    """Every proposal failed to parse: there is nothing to select."""


@dataclass(frozen=True)
class ApeSettings:
    """How APE proposes and judges instructions."""

    demos: int = 5  # APE's forward template shows five input-output pairs
    samples_per_request: int = 4  # as PMPO's n = 4 variants per rewrite request
    # A stated instruction fits in one sentence; a longer budget only adds text the parser throws away.
    max_new_tokens: int = 48
    temperature: float = 0.8  # pmpo.models.generation.sample's default, also what PMPO's rewriter samples with
    # Same budget as pmpo.evaluation.heldout.evaluate's generation accuracy, so training and held-out accuracy agree.
    answer_tokens: int = 16
    # Requests allowed per wanted candidate before giving up on reaching `n` distinct ones.
    max_requests_per_candidate: float = 2.0


@dataclass(frozen=True)
class ApeResult:
    """Every proposed instruction with its training accuracy, and the selected one."""

    candidates: tuple[str, ...]  # in proposal order, distinct
    accuracies: tuple[float, ...]  # greedy training accuracy of each candidate
    best: str
    best_accuracy: float
    requests: int  # forward-template generations sampled


def demo_output(example: Example) -> str:
    """The reference output a demonstration shows: the target, or the preferred output."""
    return example.chosen if isinstance(example, Preference) else example.target


def forward_request(demos: Sequence[Example]) -> str:
    """APE's forward generation text for these demonstrations, ending where the instruction goes."""
    count = NUMBER_WORDS[len(demos)] if len(demos) < len(NUMBER_WORDS) else str(len(demos))
    pairs = "\n\n".join(f"Input: {e.input}\nOutput: {demo_output(e)}" for e in demos)
    return HEADER.format(count=count) + pairs + "\n\n" + COMPLETE


def parse_instruction(text: str) -> str | None:
    """The instruction in a sampled continuation, as an imperative sentence; None when there is none."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _SENTENCE_END.split(line, maxsplit=1)[0].strip().lstrip(":").strip().strip(_QUOTES).strip()
    if line.lower().startswith("to "):  # "The instruction was to add the numbers." -> "Add the numbers."
        line = line[3:].strip()
    line = line.strip(_QUOTES + " ").rstrip(_QUOTES + ".,;:!? ")
    if len(line.split()) < 2 or len(line.split()) > MAX_WORDS or re.search(r"\b(input|output)\s*:", line, re.I):
        return None
    return line[0].upper() + line[1:] + "."


def dedupe(instructions: Sequence[str | None]) -> list[str]:
    """Distinct instructions in first-seen order (case and spacing ignored), Nones dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for text in instructions:
        key = " ".join(text.lower().split()) if text else ""
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def propose(
    lm: LoadedModel, train: Dataset, n: int, *, seed: int, settings: ApeSettings = ApeSettings()
) -> tuple[list[str], int]:
    """Up to `n` distinct instructions sampled from random demo subsets; also how many requests it took."""
    rng = np.random.default_rng(seed)
    size = min(settings.demos, len(train))
    found: list[str] = []
    limit = max(1, int(np.ceil(n / settings.samples_per_request * settings.max_requests_per_candidate)))
    requests = 0
    while len(found) < n and requests < limit:
        demos = [train.examples[int(i)] for i in rng.choice(len(train), size=size, replace=False)]
        texts = sample(
            lm,
            forward_request(demos),
            settings.samples_per_request,
            seed=_request_seed(seed, requests),
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            stop=("\n",),
        )
        requests += 1
        found = dedupe([*found, *(parse_instruction(t) for t in texts)])
    return found[:n], requests


def training_accuracy(
    lm: LoadedModel, prompts: Sequence[str], train: Dataset, *, answer_tokens: int = 16
) -> list[float]:
    """Greedy accuracy of each prompt on the training set, as pmpo.evaluation.heldout measures generation accuracy."""
    contexts = [render(lm.tokenizer, lm.placement, p, e.input).text for p in prompts for e in train.examples]
    outputs = greedy(lm, contexts, max_new_tokens=answer_tokens)
    labels = task_labels(train)
    flat = [e for _ in prompts for e in train.examples]
    hits = [is_correct(o, e, "contains", labels) for o, e in zip(outputs, flat)]
    return [float(np.mean(hits[i * len(train) : (i + 1) * len(train)])) for i in range(len(prompts))]


def select(candidates: Sequence[str], accuracies: Sequence[float]) -> int:
    """Index of the best candidate: highest accuracy, then the shorter text, then the earlier proposal."""
    if not candidates:
        raise NoInstruction("APE has no candidate to select from: every proposal failed to parse")
    return min(range(len(candidates)), key=lambda i: (-accuracies[i], len(candidates[i]), i))


def ape(lm: LoadedModel, train: Dataset, n: int, *, seed: int = 0, settings: ApeSettings = ApeSettings()) -> ApeResult:
    """Propose `n` instructions from training demonstrations and keep the one with the best training accuracy."""
    candidates, requests = propose(lm, train, n, seed=seed, settings=settings)
    accuracies = training_accuracy(lm, candidates, train, answer_tokens=settings.answer_tokens) if candidates else []
    best = select(candidates, accuracies)
    return ApeResult(
        candidates=tuple(candidates),
        accuracies=tuple(accuracies),
        best=candidates[best],
        best_accuracy=accuracies[best],
        requests=requests,
    )


def _request_seed(seed: int, request: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, request)."""
    return int(hashlib.sha256(f"ape:{seed}:{request}".encode()).hexdigest()[:8], 16)
