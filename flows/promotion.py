"""Promotion: whether a candidate replaces a prompt's production version, and the record of that decision.

The rule (flows.managed.PromotionRule, pmpo.evaluation.gate) compares paired held-out intervals only; a lower
training loss alone never promotes. Each decision about a prompt is judged on a fresh seeded draw from its test
split (pmpo.evaluation.rotation): the prompt's tag `pmpo.heldout.decisions` counts the decisions so far, and the
count picks the next draw, so the same examples do not judge every night. A prompt with no production version yet
gets its starting prompt as one first, so a candidate has something to beat. A candidate whose text is already
registered reuses its version; a candidate equal to production is not a candidate (and uses up no draw). Each
decision goes to the candidate's version tags, the optimisation run's tags and the refresh's run, whose
`heldout/<name>.json` holds the examples (rows, content hashes, seed) and per-example numbers it was judged on.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flows.heldout import SETUP_TAG, Score, evaluate_on, pool, setup_of, setup_tag
from flows.managed import ManagedPrompt, PromotionRule
from pmpo.evaluation.gate import Verdict, Why
from pmpo.evaluation.heldout import Evaluation
from pmpo.evaluation.rotation import DecisionDraw, decision_draw
from pmpo.evaluation.stats import Interval
from tasks.mlflow import links, prompts, runs, writes
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


DECISIONS_TAG = "pmpo.heldout.decisions"  # on the prompt: decisions judged so far, so the next draw's number

# The gate's reasons, and the refresh's own: the optimiser found nothing new, or the prompt failed.
DecisionWhy = Literal[Why, "no_new_candidate", "failed"]


class Change(BaseModel):
    """A change from production to the candidate and its paired confidence interval."""

    model_config = ConfigDict(frozen=True)

    estimate: float
    low: float
    high: float

    @classmethod
    def of(cls, interval: Interval | None) -> "Change | None":
        """The interval as a record field (None stays None)."""
        return None if interval is None else cls(estimate=interval.estimate, low=interval.low, high=interval.high)


class HeldoutRecord(BaseModel):
    """The held-out examples one decision was judged on, and their numbers: what an auditor needs to redo it
    (load the set-up's data, split it with its seed, `heldout_draw(test, n, seed=seed)`, compare the hashes)."""

    decision_number: int  # this prompt's decisions before this one
    seed: int  # the draw's seed (pmpo.evaluation.rotation.decision_seed), also the bootstrap's
    pool_size: int  # the test split drawn from
    pool_fingerprint: str
    fingerprint: str  # of the drawn examples, in order
    rows: list[int]  # each example's row in the data source (1-based)
    hashes: list[str]  # each example's content hash (pmpo.data.examples.example_key)
    reused: int  # examples that had judged an earlier decision
    mean_prior_uses: float
    warning: str | None = None  # the pool is too small for fresh draws, or worn past promotion.reuse_budget
    production_losses: list[float] = []
    candidate_losses: list[float] = []
    accuracy_name: str | None = None  # the accuracy the gate guarded (acc_norm, accuracy), if any
    production_correct: list[bool] | None = None
    candidate_correct: list[bool] | None = None


class Decision(BaseModel):
    """What the refresh did with one prompt, and why."""

    name: str
    outcome: Literal["promoted", "kept", "failed"]
    reason: str
    why: DecisionWhy | None = None  # the reason in one word (None: a record from before it existed)
    production_version: int | None = None  # production after the decision
    candidate_version: int | None = None  # the registered candidate (None: none, or the same text as production)
    production: Score | None = None
    candidate: Score | None = None
    loss_change: Change | None = None  # relative change of the mean held-out loss, with its interval
    accuracy_change: Change | None = None  # change in the guarded accuracy (heldout.accuracy_name)
    # relative change of the tempered held-out loss (None: nothing softened, or an older record)
    tempered_loss_change: Change | None = None
    heldout: HeldoutRecord | None = None
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
    """Judge `proposal` against production on this decision's held-out draw, register it with its decision,
    promote it if the gate lets it.

    The decision is recorded where each reader looks: the candidate's version tags (and production's, when it is
    kept for want of a new candidate), the optimisation run's tags, and the refresh's run (`record`), which is also
    linked to both versions it judged.
    """
    name = managed.name
    setup = setup_of(managed.optimize)
    number = int(prompts.prompt_tags(name).get(DECISIONS_TAG, "0"))
    draw = decision_draw(
        pool(setup, proposal.prompt),
        setup.eval.max_examples,
        base_seed=setup.seed,
        name=name,
        number=number,
        reuse_budget=rule.reuse_budget,
    )
    before = evaluate_on(setup, production.text if production else proposal.start_prompt, draw.examples)
    after = evaluate_on(setup, proposal.prompt, draw.examples)
    baseline, candidate = Score.of(before), Score.of(after)
    common = {
        SETUP_TAG: setup_tag(setup),
        "pmpo.nightly_run_id": nightly_run_id,
        **_draw_tags(draw, nightly_run_id, name),
    }
    if proposal.flow_run_id:  # fanned out: the decision links the flow run that made its candidate
        common.update({"pmpo.flow_run_id": proposal.flow_run_id, "pmpo.flow_run_url": proposal.flow_run_url or ""})
    if production is None:
        production = _bootstrap(name, proposal.start_prompt, baseline, common)
    verdict: Verdict | None = None
    if proposal.prompt == production.text:
        promote, why, version = False, "no_new_candidate", None
        reason = "no new candidate: the optimiser found nothing better than production"
        prompts.tag_version(name, production.version, {"pmpo.last_check": f"{_now()} kept: {reason}"})
    else:
        verdict = rule.decide(before, after, seed=draw.seed)
        promote, why, reason = verdict.promote, verdict.why, verdict.reason
        tags = _decision_tags(verdict, production.version, candidate, baseline, proposal, common)
        version = prompts.find_version(name, proposal.prompt)  # judged before (e.g. kept last night): no duplicate
        if version is None:
            message = f"nightly candidate vs v{production.version}: {'promoted' if promote else 'kept'}"
            version = prompts.register(name, proposal.prompt, message, tags)
        else:
            prompts.tag_version(name, version, tags)
        if promote:
            prompts.set_alias(name, PRODUCTION, version)
        prompts.tag_prompt(name, {DECISIONS_TAG: str(number + 1)})  # this draw has judged: the next one is fresh
    # The refresh's run page lists the versions it judged ("Registered prompts"), as MLflow's own evaluations do.
    for judged in {production.version, version} - {None}:
        links.link_version(nightly_run_id, name, judged)
    outcome = "promoted" if promote else "kept"
    if proposal.run_id:
        runs.tag_run(
            proposal.run_id,
            {
                "pmpo.nightly.decision": outcome,
                "pmpo.nightly.why": why,
                "pmpo.nightly.reason": reason,
                "pmpo.nightly.run_id": nightly_run_id,
                **_flow_run_tags(proposal),
            },
        )
    return Decision(
        name=name,
        outcome=outcome,
        reason=reason,
        why=why,
        production_version=version if promote else production.version,
        candidate_version=version,
        production=baseline,
        candidate=candidate,
        loss_change=Change.of(verdict.loss) if verdict else None,
        accuracy_change=Change.of(verdict.accuracy) if verdict else None,
        tempered_loss_change=Change.of(verdict.tempered) if verdict else None,
        heldout=_heldout_record(draw, before, after, verdict),
        training_loss=proposal.training_loss,
        run_id=proposal.run_id,
        flow_run_id=proposal.flow_run_id,
        flow_run_url=proposal.flow_run_url,
    )


def _heldout_record(
    draw: DecisionDraw, before: Evaluation, after: Evaluation, verdict: Verdict | None
) -> HeldoutRecord:
    """The draw and the per-example numbers the decision was made on."""
    field = {"acc_norm": "example_option_correct_norm", "accuracy": "example_correct"}.get(
        verdict.accuracy_name if verdict and verdict.accuracy_name else ""
    )
    return HeldoutRecord(
        decision_number=draw.number,
        seed=draw.seed,
        pool_size=draw.pool_size,
        pool_fingerprint=draw.pool_fingerprint,
        fingerprint=draw.examples.fingerprint,
        rows=list(draw.examples.rows),
        hashes=list(draw.hashes),
        reused=draw.reused,
        mean_prior_uses=draw.mean_prior_uses,
        warning=draw.warning,
        production_losses=list(before.example_losses),
        candidate_losses=list(after.example_losses),
        accuracy_name=verdict.accuracy_name if field else None,
        production_correct=list(getattr(before, field)) if field else None,
        candidate_correct=list(getattr(after, field)) if field else None,
    )


def _draw_tags(draw: DecisionDraw, nightly_run_id: str, name: str) -> dict[str, str]:
    """The draw on a version's tags: enough to redo it; the example list is in the refresh's run."""
    tags = {
        "pmpo.heldout.decision_number": str(draw.number),
        "pmpo.heldout.seed": str(draw.seed),
        "pmpo.heldout.n": str(len(draw.examples)),
        "pmpo.heldout.pool": str(draw.pool_size),
        "pmpo.heldout.fingerprint": draw.examples.fingerprint,
        "pmpo.heldout.reused": str(draw.reused),
        "pmpo.heldout.examples": f"runs:/{nightly_run_id}/{heldout_artifact(name)}",
    }
    if draw.warning:
        tags["pmpo.heldout.warning"] = draw.warning
    return tags


def heldout_artifact(name: str) -> str:
    """Where the refresh's run keeps one prompt's held-out record."""
    return f"heldout/{name}.json"


def _bootstrap(name: str, prompt: str, baseline: Score, common: dict[str, str]) -> PromptVersion:
    """No production version yet: the initial prompt becomes one, so the candidate has something to beat."""
    tags = {**common, "pmpo.decision": "initial", "pmpo.heldout_loss": f"{baseline.loss:.6f}"}
    version = prompts.register(name, prompt, "initial prompt (no production version yet)", tags)
    prompts.set_alias(name, PRODUCTION, version)
    return prompts.require_version(name, version)


def _decision_tags(
    verdict: Verdict, against: int, candidate: Score, baseline: Score, p: Proposal, common: dict[str, str]
) -> dict[str, str]:
    tags = {
        **common,
        "pmpo.decision": "promoted" if verdict.promote else "kept",
        "pmpo.why": verdict.why,
        "pmpo.reason": verdict.reason,
        "pmpo.compared_with": str(against),
        "pmpo.heldout_loss": f"{candidate.loss:.6f}",
        "pmpo.production_heldout_loss": f"{baseline.loss:.6f}",
        "pmpo.heldout_loss_change": _interval_tag(verdict.loss),
        "pmpo.decided_at": _now(),
    }
    if verdict.accuracy is not None:
        tags[f"pmpo.heldout_{verdict.accuracy_name}_change"] = _interval_tag(verdict.accuracy)
    if verdict.tempered is not None:
        tags["pmpo.heldout_tempered_loss_change"] = _interval_tag(verdict.tempered)
    if candidate.accuracy is not None:
        tags["pmpo.heldout_accuracy"] = f"{candidate.accuracy:.4f}"
    if p.training_loss is not None:  # for the record: a lower training loss alone never promotes
        tags["pmpo.training_loss"] = f"{p.training_loss:.6f}"
    if p.start_training_loss is not None:
        tags["pmpo.production_training_loss"] = f"{p.start_training_loss:.6f}"
    if p.run_id:
        tags["run_id"] = p.run_id
    return tags


def _interval_tag(i: Interval) -> str:
    return f"{i.estimate:+.6f} [{i.low:+.6f}, {i.high:+.6f}]"


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
        "why": [d.why for d in ds],
        "loss_change": [d.loss_change.estimate if d.loss_change else None for d in ds],
        "loss_change_low": [d.loss_change.low if d.loss_change else None for d in ds],
        "loss_change_high": [d.loss_change.high if d.loss_change else None for d in ds],
        "accuracy_change_low": [d.accuracy_change.low if d.accuracy_change else None for d in ds],
        "heldout_seed": [str(d.heldout.seed) if d.heldout else None for d in ds],
        "heldout_reused": [d.heldout.reused if d.heldout else None for d in ds],
        "heldout_warning": [d.heldout.warning if d.heldout else None for d in ds],
        "reason": [d.reason for d in ds],
        "flow_run_url": [d.flow_run_url for d in ds],
    }
    writes.write_table(run, "decisions.json", columns)
    for d in ds:  # the examples each decision was judged on, for whoever audits it
        if d.heldout is not None:
            writes.log_text(run, json.dumps(d.heldout.model_dump(mode="json"), indent=1), heldout_artifact(d.name))
    runs.set_tags(run, {f"pmpo.decision.{d.name}": d.outcome for d in ds})
    runs.set_tags(run, {f"pmpo.why.{d.name}": d.why for d in ds if d.why})
    runs.set_tags(run, {f"pmpo.flow_run.{d.name}": d.flow_run_url for d in ds if d.flow_run_url})
    metrics = {}
    for d in ds:
        if d.production and d.candidate:
            metrics[f"{d.name}/heldout_loss_production"] = d.production.loss
            metrics[f"{d.name}/heldout_loss_candidate"] = d.candidate.loss
    writes.log_metrics(run, metrics, step=0)
    runs.finish(run, "FAILED" if any(d.outcome == "failed" for d in ds) else "FINISHED")


def line(d: Decision) -> str:
    """The decision as one log line, its one-word why in brackets."""
    why = f" [{d.why}]" if d.why else ""
    if d.outcome == "promoted":
        return f"{d.name}: PROMOTED v{d.candidate_version} to production{why}: {d.reason}"
    kept = f"kept production v{d.production_version}"
    if d.candidate_version:
        kept += f" (candidate v{d.candidate_version})"
    return f"{d.name}: {kept}{why}: {d.reason}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
