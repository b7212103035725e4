"""Promotion: whether a candidate replaces a prompt's production version, and the record of that decision.

The rule (flows.managed.PromotionRule) compares held-out scores only; a lower training loss alone never promotes.
A prompt with no production version yet gets its starting prompt as one first, so a candidate has something to
beat. A candidate whose text is already registered reuses its version; a candidate equal to production is not a
candidate. Each decision goes to the candidate's version tags, the optimisation run's tags and the refresh's run.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flows.heldout import SETUP_TAG, Score, score, setup_of, setup_tag
from flows.managed import ManagedPrompt, PromotionRule
from tasks.mlflow import prompts, runs, writes
from tasks.mlflow.prompts import PRODUCTION, PromptVersion
from tasks.mlflow.runs import TrackedRun


class Proposal(BaseModel):
    """A candidate for production, and where it came from. Its training losses are for the record only."""

    model_config = ConfigDict(frozen=True)

    start_prompt: str  # what the optimisation started from (production, or the initial prompt)
    prompt: str
    training_loss: float | None = None
    start_training_loss: float | None = None
    run_id: str | None = None  # the optimisation run
    flow_run_id: str | None = None  # fanned out: the prompt's own flow run on the work pool
    flow_run_url: str | None = None


class Decision(BaseModel):
    """What the refresh did with one prompt, and why."""

    name: str
    outcome: Literal["promoted", "kept", "failed"]
    reason: str
    production_version: int | None = None  # production after the decision
    candidate_version: int | None = None  # the registered candidate (None: none, or the same text as production)
    production: Score | None = None
    candidate: Score | None = None
    training_loss: float | None = None  # the candidate's, on the optimiser's training examples (not used to decide)
    run_id: str | None = None  # the optimisation run
    flow_run_id: str | None = None  # fanned out: the flow run that made the candidate (in the Prefect UI: url)
    flow_run_url: str | None = None


def decide(
    managed: ManagedPrompt,
    rule: PromotionRule,
    production: PromptVersion | None,
    proposal: Proposal,
    nightly_run_id: str,
) -> Decision:
    """Judge `proposal` against production on held-out data, register it with its decision, promote it if it won.

    The decision is recorded where each reader looks: the candidate's version tags (and production's, when it is
    kept for want of a new candidate), the optimisation run's tags, and the refresh's run (`record`).
    """
    name = managed.name
    setup = setup_of(managed.optimize)
    baseline = score(setup, production.text if production else proposal.start_prompt)
    candidate = score(setup, proposal.prompt)
    common = {SETUP_TAG: setup_tag(setup), "pmpo.nightly_run_id": nightly_run_id}
    if proposal.flow_run_id:  # fanned out: the decision links the flow run that made its candidate
        common.update({"pmpo.flow_run_id": proposal.flow_run_id, "pmpo.flow_run_url": proposal.flow_run_url or ""})
    if production is None:
        production = _bootstrap(name, proposal.start_prompt, baseline, common)
    if proposal.prompt == production.text:
        promote, reason, version = False, "no new candidate: the optimiser found nothing better than production", None
        prompts.tag_version(name, production.version, {"pmpo.last_check": f"{_now()} kept: {reason}"})
    else:
        promote, reason = rule.decide(baseline, candidate)
        tags = _decision_tags(promote, reason, production.version, candidate, baseline, proposal, common)
        version = prompts.find_version(name, proposal.prompt)  # judged before (e.g. kept last night): no duplicate
        if version is None:
            message = f"nightly candidate vs v{production.version}: {'promoted' if promote else 'kept'}"
            version = prompts.register(name, proposal.prompt, message, tags)
        else:
            prompts.tag_version(name, version, tags)
        if promote:
            prompts.set_alias(name, PRODUCTION, version)
    outcome = "promoted" if promote else "kept"
    if proposal.run_id:
        runs.tag_run(
            proposal.run_id,
            {
                "pmpo.nightly.decision": outcome,
                "pmpo.nightly.reason": reason,
                "pmpo.nightly.run_id": nightly_run_id,
                **_flow_run_tags(proposal),
            },
        )
    return Decision(
        name=name,
        outcome=outcome,
        reason=reason,
        production_version=version if promote else production.version,
        candidate_version=version,
        production=baseline,
        candidate=candidate,
        training_loss=proposal.training_loss,
        run_id=proposal.run_id,
        flow_run_id=proposal.flow_run_id,
        flow_run_url=proposal.flow_run_url,
    )


def _bootstrap(name: str, prompt: str, baseline: Score, common: dict[str, str]) -> PromptVersion:
    """No production version yet: the initial prompt becomes one, so the candidate has something to beat."""
    tags = {**common, "pmpo.decision": "initial", "pmpo.heldout_loss": f"{baseline.loss:.6f}"}
    version = prompts.register(name, prompt, "initial prompt (no production version yet)", tags)
    prompts.set_alias(name, PRODUCTION, version)
    return prompts.require_version(name, version)


def _decision_tags(
    promote: bool, reason: str, against: int, candidate: Score, baseline: Score, p: Proposal, common: dict[str, str]
) -> dict[str, str]:
    tags = {
        **common,
        "pmpo.decision": "promoted" if promote else "kept",
        "pmpo.reason": reason,
        "pmpo.compared_with": str(against),
        "pmpo.heldout_loss": f"{candidate.loss:.6f}",
        "pmpo.production_heldout_loss": f"{baseline.loss:.6f}",
        "pmpo.decided_at": _now(),
    }
    if candidate.accuracy is not None:
        tags["pmpo.heldout_accuracy"] = f"{candidate.accuracy:.4f}"
    if p.training_loss is not None:  # for the record: a lower training loss alone never promotes
        tags["pmpo.training_loss"] = f"{p.training_loss:.6f}"
    if p.start_training_loss is not None:
        tags["pmpo.production_training_loss"] = f"{p.start_training_loss:.6f}"
    if p.run_id:
        tags["run_id"] = p.run_id
    return tags


def _flow_run_tags(p: Proposal) -> dict[str, str]:
    """Fanned out: the prompt's flow run, on its optimisation run's record."""
    return (
        {"pmpo.nightly.flow_run_id": p.flow_run_id, "pmpo.nightly.flow_run_url": p.flow_run_url or ""}
        if p.flow_run_id
        else {}
    )


def record(run: TrackedRun, ds: list[Decision]) -> None:
    """The refresh's run: a decisions table, one tag and the held-out losses per prompt; FAILED when one failed."""
    columns = {
        "name": [d.name for d in ds],
        "outcome": [d.outcome for d in ds],
        "production_version": [d.production_version for d in ds],
        "candidate_version": [d.candidate_version for d in ds],
        "production_loss": [d.production.loss if d.production else None for d in ds],
        "candidate_loss": [d.candidate.loss if d.candidate else None for d in ds],
        "reason": [d.reason for d in ds],
        "flow_run_url": [d.flow_run_url for d in ds],
    }
    writes.write_table(run, "decisions.json", columns)
    runs.set_tags(run, {f"pmpo.decision.{d.name}": d.outcome for d in ds})
    runs.set_tags(run, {f"pmpo.flow_run.{d.name}": d.flow_run_url for d in ds if d.flow_run_url})
    metrics = {}
    for d in ds:
        if d.production and d.candidate:
            metrics[f"{d.name}/heldout_loss_production"] = d.production.loss
            metrics[f"{d.name}/heldout_loss_candidate"] = d.candidate.loss
    writes.log_metrics(run, metrics, step=0)
    runs.finish(run, "FAILED" if any(d.outcome == "failed" for d in ds) else "FINISHED")


def line(d: Decision) -> str:
    """The decision as one log line."""
    if d.outcome == "promoted":
        return f"{d.name}: PROMOTED v{d.candidate_version} to production: {d.reason}"
    kept = f"kept production v{d.production_version}"
    if d.candidate_version:
        kept += f" (candidate v{d.candidate_version})"
    return f"{d.name}: {kept}: {d.reason}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
