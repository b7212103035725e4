"""Compare registered versions of a prompt on the same held-out examples: loss and accuracy of each, a
word-level diff of their texts, and a comparison run in MLflow (table and bar plot).

The held-out data is the one recorded with the versions (see flows.heldout), unless the config names other data.
"""

from __future__ import annotations

import difflib

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.config import ConfigError, DataConfig, EvalConfig, EvaluateConfig
from flows.heldout import Score, recorded_setup, score, setup_tag
from pmpo.models.settings import ModelSettings
from pmpo.settings import Strict
from tasks import plots
from tasks.mlflow import links, prompts, runs, writes
from tasks.mlflow.prompts import LATEST, PRODUCTION, PromptVersion


class CompareConfig(Strict):
    """Which versions of which prompt, and (optionally) other data or model than the ones recorded with them."""

    name: str = Field(description="the prompt's name in the registry")
    versions: list[str] = Field(
        default_factory=list, description="version numbers or aliases; default: production and latest"
    )
    data: DataConfig | None = Field(None, description="held-out data; default: the data recorded with the versions")
    model: ModelSettings | None = Field(None, description="default: the model recorded with the versions")
    eval: EvalConfig | None = Field(None, description="default: the evaluation settings recorded with the versions")
    experiment: str | None = Field(
        None, description="MLflow experiment of the comparison run; default: the prompt name"
    )


class VersionScore(BaseModel):
    """One version on the shared held-out examples."""

    version: int
    aliases: list[str]
    prompt: str
    score: Score
    diff: str  # against the first version compared: [-removed-] {+added+}


class Comparison(BaseModel):
    """The comparison, and where its run is."""

    name: str
    data_source: str
    model: str
    n_examples: int
    rows: list[VersionScore]
    run_id: str
    experiment: str


def word_diff(old: str, new: str) -> str:
    """`new` against `old` word by word: removed words as [-...-], added ones as {+...+} (git's --word-diff)."""
    a, b = old.split(), new.split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.extend(a[i1:i2])
            continue
        if op in ("delete", "replace"):
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if op in ("insert", "replace"):
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def default_refs(name: str) -> list[str]:
    """Production and the latest version (the two the next promotion is about); just one if they coincide."""
    refs = [PRODUCTION] if prompts.get_version(name, PRODUCTION) else []
    return [*refs, LATEST]


@flow(name="compare-prompts")
def compare_prompts(config: CompareConfig) -> Comparison:
    """Score prompt versions on the same held-out examples; log the table and a bar plot to MLflow."""
    refs = config.versions or default_refs(config.name)
    versions = _unique([prompts.require_version(config.name, ref) for ref in refs])
    setup = _setup(config, versions)
    first = versions[0].text
    rows = [
        VersionScore(
            version=v.version,
            aliases=list(v.aliases),
            prompt=v.text,
            score=score(setup, v.text),
            diff=word_diff(first, v.text),
        )
        for v in versions
    ]
    run = runs.start_record_run(
        config.experiment or config.name,
        run_name=f"compare {config.name} " + " ".join(f"v{r.version}" for r in rows),
        tags={
            "pmpo.kind": "compare",
            "pmpo.prompt_name": config.name,
            "prefect.flow_run_id": str(flow_run.get_id() or ""),
            "pmpo.evaluate_config": setup_tag(setup),
        },
    )
    _record(run, rows)
    for v in versions:  # the run page lists the versions it judged ("Registered prompts")
        links.link_version(run.run_id, config.name, v.version)
    return Comparison(
        name=config.name,
        data_source=setup.data.source,
        model=setup.model.spec,
        n_examples=rows[0].score.n_examples,
        rows=rows,
        run_id=run.run_id,
        experiment=run.experiment,
    )


def _setup(config: CompareConfig, versions: list[PromptVersion]) -> EvaluateConfig:
    """The recorded set-up of the first version that has one, with what the config gives in its place."""
    recorded = next((s for s in map(recorded_setup, versions) if s is not None), None)
    if recorded is None and config.data is None:
        listed = ", ".join(f"v{v.version}" for v in versions)
        raise ConfigError(
            f"prompt {config.name!r} {listed}: no data source is recorded with these versions: give data (--data)"
        )
    base = recorded or EvaluateConfig(data=config.data)
    given = {k: v for k, v in (("data", config.data), ("model", config.model), ("eval", config.eval)) if v is not None}
    return base.model_copy(update=given)


def _unique(versions: list[PromptVersion]) -> list[PromptVersion]:
    seen: dict[int, PromptVersion] = {}
    for v in versions:
        seen.setdefault(v.version, v)
    return list(seen.values())


def _record(run: runs.TrackedRun, rows: list[VersionScore]) -> None:
    columns = {
        "version": [r.version for r in rows],
        "aliases": [", ".join(r.aliases) for r in rows],
        "loss": [r.score.loss for r in rows],
        "loss_per_token": [r.score.loss_per_token for r in rows],
        "accuracy": [r.score.accuracy for r in rows],
        "n_examples": [r.score.n_examples for r in rows],
        "prompt": [r.prompt for r in rows],
        "diff": [r.diff for r in rows],
    }
    writes.write_table(run, "comparison.json", columns)
    metrics = {f"loss_v{r.version}": r.score.loss for r in rows}
    metrics.update({f"accuracy_v{r.version}": r.score.accuracy for r in rows if r.score.accuracy is not None})
    writes.log_metrics(run, metrics, step=0)
    labels = [f"v{r.version}" + (f" ({', '.join(r.aliases)})" if r.aliases else "") for r in rows]
    fig = plots.losses_by_version(labels, [r.score.loss for r in rows], [r.score.accuracy for r in rows])
    try:
        writes.log_figure(run, fig, "comparison.png")
    finally:
        plots.close(fig)
    runs.finish(run)
