"""A GEPA arm (Agrawal et al. 2025, "GEPA: Reflective Prompt Evolution Can Outperform Reinforcement Learning"):
the optimizer MLflow ships (`mlflow.genai.optimize_prompts`), run offline with the bundled model.

GEPA evolves the candidate {"instruction": text} from the task's own instruction. Each iteration it runs a
parent on a minibatch of training examples (3, GEPA's default), shows the replies and feedback to a reflection
model with GEPA's own reflection prompt, takes the instruction it writes, runs it on the same minibatch, and
keeps it (scoring it on the whole validation set, here the training set, as GEPA does when given no valset)
when the minibatch score rose. The best candidate is the one with the highest validation accuracy, the earlier
on ties (GEPA's `FullEvaluationPolicy`).

Offline: the task model and the reflection model are both the loaded pmpo model, through
`EvaluationAdapter.evaluate` (greedy answers, as pmpo.evaluation.heldout generates them) and a local
str -> str callable (`Reflector`, one sampled reply in the model's chat template). Scores are generation
accuracy, `pmpo.evaluation.matching.is_correct(..., "contains")`, for multiple choice too: GEPA reflects on
what the model wrote, and option ranking writes nothing to reflect on. That is also how GEPA and MLflow's
GEPA optimizer judge a prompt: by the task model's generated output.

Budget: forward tokens (tokens scored + read as generation context + generated, `lm.usage`) since the search
began, the number the benchmark reports for every arm. A stopper ends GEPA at the first iteration boundary
once it is spent, and every model call first checks it, so the search stops within one model call of the
budget (at most one validation pass, or one reflection, over).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from pmpo.data.examples import Dataset, Example, MultipleChoice, example_input
from pmpo.evaluation.heldout import answer_budget
from pmpo.evaluation.matching import Match, is_correct, references, task_labels
from pmpo.models.generation import greedy, sample
from pmpo.models.loading import LoadedModel
from pmpo.models.usage import UsageSnapshot
from pmpo.text.rendering import chat_request, render_many
from pmpo.text.template import input_text

try:
    import gepa
except ImportError:  # an optional dependency: the `bench` extra
    gepa = None

COMPONENT = "instruction"  # the one text GEPA evolves
log = logging.getLogger(__name__)


class GepaNotInstalled(ImportError):
    """The `gepa` package is missing: the GEPA arm cannot run."""


class BudgetSpent(Exception):
    """The search's forward-token budget is spent: no more model calls."""


@dataclass(frozen=True)
class GepaSettings:
    """How the GEPA arm runs the task and reflection model; GEPA's own defaults elsewhere."""

    minibatch: int = 3  # GEPA's reflection_minibatch_size default
    # GEPA asks for a detailed instruction in ``` blocks; a cap keeps a small model's rambling (which then
    # becomes the instruction every later answer reads) within bounds.
    reflection_tokens: int = 256
    temperature: float = 0.8  # as pmpo's rewriter samples with the same model
    top_p: float = 0.95
    match: Match = "contains"  # the held-out evaluation's default rule


@dataclass(frozen=True)
class GepaResult:
    """What the GEPA search kept and what it cost."""

    best: str
    best_accuracy: float  # on the training set, which GEPA used as its validation set
    proposed: int  # instructions the reflection model wrote
    kept: tuple[str, ...]  # the candidate pool in order, the seed first: each scored on the whole set
    accuracies: tuple[float, ...]  # training accuracy of each kept candidate
    forward_tokens: int
    stopped_by_budget: bool


class Budget:
    """Forward tokens the model has spent since this budget was made, against a limit."""

    def __init__(self, lm: LoadedModel, limit: int):
        self.lm, self.limit, self.start = lm, limit, lm.usage.snapshot()

    def spent(self) -> int:
        """Tokens scored, read as generation context, or generated since the start."""
        used: UsageSnapshot = self.lm.usage.snapshot() - self.start
        return used.tokens_scored + used.tokens_prefilled + used.tokens_generated

    def exhausted(self, *_: Any) -> bool:
        """Whether the budget is spent (also GEPA's stop-callback signature: it passes the state)."""
        return self.spent() >= self.limit

    def check(self) -> None:
        """Raise `BudgetSpent` before a model call that the budget no longer covers."""
        if self.exhausted():
            raise BudgetSpent(f"forward-token budget spent: {self.spent():,} of {self.limit:,}")


@dataclass(frozen=True)
class Trace:
    """One example's run under a candidate: what GEPA's reflection reads."""

    input: str
    output: str
    references: tuple[str, ...]
    options: tuple[str, ...]
    correct: bool


class EvaluationAdapter:
    """GEPA's adapter: runs a candidate instruction on examples with the model and judges the replies."""

    propose_new_texts = None  # GEPA's own reflective proposal, with `Reflector` as its language model

    def __init__(self, lm: LoadedModel, train: Dataset, budget: Budget, settings: GepaSettings = GepaSettings()):
        self.lm, self.budget, self.settings = lm, budget, settings
        self.labels = task_labels(train)
        self.answer_tokens = answer_budget(lm, train)  # as the held-out evaluation budgets answers

    def evaluate(self, batch: list[Example], candidate: dict[str, str], capture_traces: bool = False) -> Any:
        """Greedy replies to each example under the candidate, scored 1.0 when right; traces on request."""
        self.budget.check()
        contexts = render_many(
            self.lm.tokenizer, self.lm.placement, candidate[COMPONENT], [example_input(e) for e in batch]
        )
        outputs = greedy(self.lm, contexts, max_new_tokens=self.answer_tokens)
        correct = [bool(is_correct(o, e, self.settings.match, self.labels)) for o, e in zip(outputs, batch)]
        traces = [
            Trace(
                input=input_text(example_input(e)),
                output=o,
                references=tuple(references(e)),
                options=tuple(e.options) if isinstance(e, MultipleChoice) else (),
                correct=c,
            )
            for e, o, c in zip(batch, outputs, correct)
        ]
        return gepa.EvaluationBatch(
            outputs=list(outputs),
            scores=[float(c) for c in correct],
            trajectories=traces if capture_traces else None,
        )

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, str]]]:
        """Per component, the records GEPA's reflection prompt shows: input, reply, feedback."""
        records = [reflective_record(t) for t in eval_batch.trajectories or ()]
        return {name: records for name in components_to_update}


def reflective_record(trace: Trace) -> dict[str, str]:
    """One example as GEPA's reflection reads it, with feedback in the wording of GEPA's default adapter."""
    answer = trace.references[0]
    if trace.correct:
        feedback = f"The generated response is correct. The response includes the correct answer '{answer}'."
    else:
        feedback = (
            f"The generated response is incorrect. The correct answer is '{answer}'. "
            "Ensure that the correct answer is included in the response exactly as it is."
        )
    inputs = trace.input + (f"\nOptions: {', '.join(trace.options)}" if trace.options else "")
    return {"Inputs": inputs, "Generated Outputs": trace.output, "Feedback": feedback}


class Reflector:
    """GEPA's reflection model as a local callable: one sampled chat reply of the loaded model."""

    def __init__(self, lm: LoadedModel, budget: Budget, seed: int, settings: GepaSettings = GepaSettings()):
        self.lm, self.budget, self.seed, self.settings = lm, budget, seed, settings
        self.calls = 0

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        """The model's reply to GEPA's reflection prompt (a text; GEPA sends messages only with images)."""
        if not isinstance(prompt, str):
            prompt = "\n\n".join(str(m.get("content", "")) for m in prompt)
        self.budget.check()
        seed = int(hashlib.sha256(f"gepa:{self.seed}:{self.calls}".encode()).hexdigest()[:8], 16)
        self.calls += 1
        (reply,) = sample(
            self.lm,
            chat_request(self.lm.tokenizer, prompt),
            1,
            seed=seed,
            max_new_tokens=self.settings.reflection_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
        )
        return reply


class Pool:
    """GEPA callback: every candidate scored on the whole validation set, in order, with its mean score."""

    def __init__(self) -> None:
        self.candidates: list[str] = []
        self.scores: list[float] = []

    def on_valset_evaluated(self, event: Mapping[str, Any]) -> None:
        """Record a candidate GEPA scored on the validation set."""
        self.candidates.append(event["candidate"][COMPONENT])
        self.scores.append(float(event["average_score"]))

    def best(self) -> int:
        """GEPA's pick: the highest mean score, the earlier candidate on ties."""
        return max(range(len(self.scores)), key=lambda i: (self.scores[i], -i))


class _Log:
    """GEPA's iteration log, sent to this module's logger instead of stdout."""

    def log(self, message: str) -> None:
        log.debug(message)


def gepa_run(
    lm: LoadedModel,
    train: Dataset,
    initial: str,
    *,
    token_budget: int,
    seed: int,
    settings: GepaSettings = GepaSettings(),
) -> GepaResult:
    """GEPA from `initial` on `train` with the loaded model as task and reflection model, until the budget is spent."""
    if gepa is None:
        raise GepaNotInstalled(
            "the GEPA arm needs the `gepa` package (pip install 'gepa==0.1.4', or the project's `bench` extra)"
        )
    if token_budget < 1:
        raise ValueError(f"token_budget must be positive, not {token_budget}")
    budget = Budget(lm, token_budget)
    reflector = Reflector(lm, budget, seed, settings)
    pool = Pool()
    stopped = False
    try:
        gepa.optimize(
            seed_candidate={COMPONENT: initial},
            trainset=list(train.examples),
            adapter=EvaluationAdapter(lm, train, budget, settings),
            reflection_lm=reflector,
            reflection_minibatch_size=settings.minibatch,
            stop_callbacks=[budget.exhausted],
            callbacks=[pool],
            logger=_Log(),
            seed=seed,
        )
    except BudgetSpent:  # a model call the budget no longer covered: keep what was scored so far
        stopped = True
    stopped = stopped or budget.exhausted()
    if not pool.candidates:  # the budget ran out before the seed was scored on the whole set
        return GepaResult(initial, float("nan"), reflector.calls, (), (), budget.spent(), stopped)
    best = pool.best()
    return GepaResult(
        best=pool.candidates[best],
        best_accuracy=pool.scores[best],
        proposed=reflector.calls,
        kept=tuple(pool.candidates),
        accuracies=tuple(pool.scores),
        forward_tokens=budget.spent(),
        stopped_by_budget=stopped,
    )


def gepa_search(lm: LoadedModel, train: Dataset, initial: str, *, token_budget: int, seed: int) -> tuple[str, int]:
    """The benchmark's GEPA arm: (best instruction, instructions proposed) within `token_budget` forward tokens."""
    found = gepa_run(lm, train, initial, token_budget=token_budget, seed=seed)
    return found.best, found.proposed
