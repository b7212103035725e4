"""Thin Prefect tasks over pmpo: load data, batch loss, segment masking, rewrite proposal, selection, evaluation.

Each task is a few lines over a pmpo function. Computing tasks persist their result as JSON and carry an explicit
cache policy (tasks.caching): task source + model identity + dataset fingerprint + prompt text(s) + the
settings that change the result. Run names say what a run did, e.g. `loss iter=2 13x40`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from pmpo.data import ColumnMap, Dataset, Split, load_dataset, split_dataset
from pmpo.evaluation.heldout import Evaluation, evaluate
from pmpo.loop.demonstrations import demonstration_prompts
from pmpo.loop.result import Candidate, SegmentEffect
from pmpo.loop.selection import select
from pmpo.loop.settings import DemonstrationSettings, SelectionSettings
from pmpo.loop.steps import prompt_units, rewrite_prompts, segment_effects
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.loss import LossMatrix
from tasks.caching import policy
from tasks.models import ModelRef, loaded, scorer, text_side
from tasks.progress import Event, report
from tasks.rewriters import RewriterRef
from tasks.rewriters import rewriter as get_rewriter
from tasks.serialization import PmpoJSONSerializer

JSON_RESULTS = PmpoJSONSerializer()  # results are data, never pickle (see tasks.serialization)


def loss_label(prompts: Sequence[str], data: Dataset, iteration: int, **_) -> str:
    """`loss iter=2 13x40`: prompts x examples."""
    return f"loss iter={iteration} {len(prompts)}x{len(data)}"


def segments_label(iteration: int, **_) -> str:
    """`mask iter=2`."""
    return f"mask iter={iteration}"


def rewrites_label(iteration: int, hard: Sequence[int], **_) -> str:
    """`rewrite iter=2 k=3`: one request per hard example."""
    return f"rewrite iter={iteration} k={len(hard)}"


def select_label(iteration: int, **_) -> str:
    """`select iter=2`."""
    return f"select iter={iteration}"


def evaluate_label(which: str, data: Dataset, **_) -> str:
    """`evaluate final 50 ex`."""
    return f"evaluate {which} {len(data)} ex"


def _named(label):
    """A task_run_name callable: Prefect passes the run's parameters to a callable that takes `parameters`."""

    def name(parameters: dict) -> str:
        return label(**parameters)

    return name


@task(name="load data", cache_policy=NO_CACHE, task_run_name="load {source}")
def load_split(
    source: str,
    *,
    format: str | None,
    columns: dict[str, str],
    kind: str,
    limit: int | None,
    hub_config: str | None,
    hub_split: str | None,
    seed: int,
    train_fraction: float,
    train_cap: int | None,
    variables: Sequence[str] = (),
    description: str | None = None,
) -> tuple[Dataset, Split]:
    """Read the dataset and split it (not cached: the source may change; its fingerprint keys the rest).

    `variables`: the prompt's template variables, which the examples' fields fill. `description`: the task in
    the user's words, in place of the data's own (the rewriter reads it; task keys hold it with the data)."""
    dataset = load_dataset(
        source,
        format=format,
        columns=ColumnMap.from_mapping(columns),
        kind=kind,
        limit=limit,
        hub_config=hub_config,
        split=hub_split,
        variables=variables,
    )
    if description is not None:
        dataset = dataclasses.replace(dataset, description=description.strip())
    return dataset, split_dataset(dataset, seed=seed, train_fraction=train_fraction, train_cap=train_cap)


@task(
    name="loss",
    cache_policy=policy("iteration"),
    persist_result=True,
    result_serializer=JSON_RESULTS,
    task_run_name=_named(loss_label),
)
def loss_matrix(model: ModelRef, prompts: list[str], data: Dataset, iteration: int) -> LossMatrix:
    """Per-example losses of every prompt (the iteration only names the run: the same prompts cost once)."""
    sc, label = scorer(model), loss_label(prompts, data, iteration)
    parts = []
    for done, prompt in enumerate(prompts, start=1):  # one prompt at a time, to report progress
        parts.append(sc.loss_matrix([prompt], data.examples))
        report(Event("advance", label, done, len(prompts)))
    return LossMatrix.stack(parts)


@task(
    name="mask",
    cache_policy=policy(),
    persist_result=True,
    result_serializer=JSON_RESULTS,
    task_run_name=_named(segments_label),
)
def mask_segments(
    model: ModelRef,
    rewriter: RewriterRef,
    prompt: str,
    prompt_loss: float,
    data: Dataset,
    iteration: int,
    units: str,
    max_units: int,
    seed: int,
    small_model_params: int,
    chat_message: int | None = None,
    balance_labels: bool = True,
) -> tuple[list[str], tuple[SegmentEffect, ...]]:
    """The prompt's removable units and dL of masking each (iteration, seed and the rewriter matter for
    model-marked units). Its parameters are exactly what `prompt_units` and the effects read, so the key holds
    every one."""
    spans = prompt_units(
        get_rewriter(rewriter),
        prompt,
        iteration,
        units=units,
        max_units=max_units,
        small_model_params=small_model_params,
        seed=seed,
        chat_message=chat_message,
    )
    return list(spans.texts), segment_effects(scorer(model), prompt_loss, spans, data, balance_labels=balance_labels)


@task(
    name="rewrite",
    cache_policy=policy(),
    persist_result=True,
    result_serializer=JSON_RESULTS,
    task_run_name=_named(rewrites_label),
)
def propose_rewrites(
    model: ModelRef,
    rewriter: RewriterRef,
    incumbent: str,
    data: Dataset,
    hard: list[int],
    effects: tuple[SegmentEffect, ...],
    iteration: int,
    seen: frozenset[str],
    rewrite: RewriteSettings,
    seed: int,
    chat_message: int | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Rewrite variants on the hard examples; the rewriter, seed and iteration fix the sampling, so they are in
    the key (the scored model too: the FULL template shows what it now prefers). The whole rewrite block is in
    the key, as the run's config has it: nothing is rebuilt from parts here."""
    return rewrite_prompts(
        get_rewriter(rewriter),
        incumbent,
        data,
        hard,
        effects,
        rewrite,
        iteration,
        seen,
        scorer(model),
        seed=seed,
        chat_message=chat_message,
    )


def demonstrations_label(iteration: int, **_) -> str:
    """`demos iter=2`."""
    return f"demos iter={iteration}"


@task(name="demonstrations", cache_policy=NO_CACHE, task_run_name=_named(demonstrations_label))
def propose_demonstrations(
    model: ModelRef,
    incumbent: str,
    data: Dataset,
    losses: list[float],
    iteration: int,
    seen: frozenset[str],
    demonstrations: DemonstrationSettings,
    seed: int,
    chat_message: int | None = None,
) -> tuple[list[str], dict[str, int]]:
    """The incumbent with training examples as demonstrations, chosen by its losses (not cached: no model work,
    only the tokenizer's length check; the same inputs give the same prompts)."""
    return demonstration_prompts(
        text_side(model),
        incumbent,
        data,
        losses,
        demonstrations,
        iteration,
        seen,
        seed=seed,
        chat_message=chat_message,
        mc_objective=model.scorer.mc_objective,
    )


@task(name="select", cache_policy=NO_CACHE, task_run_name=_named(select_label))
def select_incumbent(
    incumbent: Candidate, candidates: list[Candidate], iteration: int, selection: SelectionSettings
) -> Candidate:
    """Keep the incumbent unless a candidate's loss is lower by more than the selection gate's noise floor."""
    return select(incumbent, candidates, selection)


@task(
    name="evaluate",
    cache_policy=policy("which"),
    persist_result=True,
    result_serializer=JSON_RESULTS,
    task_run_name=_named(evaluate_label),
)
def evaluate_prompt(
    model: ModelRef, prompt: str, data: Dataset, which: str, generate: bool, max_new_tokens: int | None, match: str
) -> Evaluation:
    """Held-out loss (and accuracy by greedy generation when `generate`) of one prompt."""
    label = evaluate_label(which, data)
    report(Event("advance", label, 0, 1))
    remote = model.settings.backend == "openai"
    lm = text_side(model) if remote else loaded(model)  # remote: loss, option scores and answers come from the server
    result = evaluate(
        lm, prompt, data, scorer=scorer(model), generate=generate, max_new_tokens=max_new_tokens, match=match
    )
    report(Event("advance", label, 1, 1))
    return result
