"""The record in MLflow's own terms, so its UI shows what pmpo's tags say: the run's training and held-out sets as
dataset inputs, the run's description, and the registered prompt version linked to the run that made it.

MLflow's run page reads these, not pmpo's tags: "Datasets" lists the run's dataset inputs (name, digest, the
`mlflow.data.context` tag: train / heldout), "Description" is the `mlflow.note.content` tag, and "Registered
prompts" the versions linked by `MlflowClient.link_prompt_version_to_run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pmpo.data.examples import Dataset
from tasks.mlflow.runs import TrackedRun, set_tags
from tasks.mlflow.store import client, get_run

DESCRIPTION_TAG = "mlflow.note.content"  # the run page's "Description"


def log_datasets(run: TrackedRun, sets: dict[str, Dataset]) -> None:
    """Each dataset as a run input under its context (`train`, `heldout`), once: a resumed run already has them."""
    c = client()
    have = {
        (d.dataset.digest, t.value)
        for d in get_run(c, run.run_id).inputs.dataset_inputs
        for t in d.tags
        if t.key == MLFLOW_DATASET_CONTEXT
    }
    inputs = []
    for context, data in sets.items():
        entity = as_mlflow_dataset(data, context)._to_mlflow_entity()
        if (entity.digest, context) not in have:
            inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    if inputs:
        c.log_inputs(run.run_id, datasets=inputs)


def as_mlflow_dataset(data: Dataset, context: str):
    """`data` as an MLflow pandas dataset: one row per example, its fingerprint as the digest, its file as source."""
    frame = pd.DataFrame([{"kind": type(e).__name__, **_fields(e)} for e in data.examples])
    whole = data.name.removesuffix("/train").removesuffix("/test")  # the split's name without pmpo's own suffix
    name, digest = f"{whole}-{context}", data.fingerprint[:36]
    source = str(Path(data.origin).resolve()) if data.origin and Path(data.origin).exists() else None
    try:
        return mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    except MlflowException:  # a source MLflow cannot resolve (a hub name): the dataset without it
        return mlflow.data.from_pandas(frame, name=name, digest=digest)


def describe(run: TrackedRun, text: str) -> None:
    """Set the run's description (Markdown, shown on its page)."""
    set_tags(run, {DESCRIPTION_TAG: text})


def link_version(run_id: str, name: str, version: int) -> None:
    """Link a registered prompt version to a run (the run page's "Registered prompts")."""
    c = client()
    c.link_prompt_version_to_run(run_id, c.get_prompt_version(name, version))


def _fields(example) -> dict:
    """An example's fields as table cells (tuples of options as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(example).items()}
