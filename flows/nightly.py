"""The nightly refresh: for each managed prompt, optimise from the current production version on the current
data, judge the candidate against production on the same held-out examples, and promote it only when it is
better there by the margin. Each decision goes to the flow's log, the candidate's registry version tags, the
optimisation run's tags and the refresh's own MLflow run.

One failing prompt does not stop the others: the refresh finishes them all, then fails naming the ones that
failed. The step that makes a candidate is a parameter of `refresh` (tests pass a deliberately bad one).

Against a Prefect server whose `optimize` deployment sits on a work pool, the optimisations fan out: each prompt
is its own flow run on the pool (flows.fanout), and the decisions are made once every one of them has ended,
each linking its flow run. Otherwise they run one after another in this process.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from flows import fanout
from flows.heldout import SETUP_TAG, Score, score, setup_of, setup_tag
from flows.managed import ManagedPrompt, NightlyConfig, Plan, PromotionRule, plan
from flows.optimize import optimize_prompt
from pmpo.errors import PmpoError
from tasks.mlflow import prompts, runs, writes
from tasks.mlflow.prompts import PRODUCTION, PromptVersion


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


Proposer = Callable[[ManagedPrompt, "str | None"], Proposal]


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


class NightlyReport(BaseModel):
    """Every decision of one refresh, and its MLflow run."""

    run_id: str
    experiment: str
    decisions: list[Decision]

    @property
    def failed(self) -> list[str]:
        """Names of the prompts that failed."""
        return [d.name for d in self.decisions if d.outcome == "failed"]


class NightlyRefreshFailed(PmpoError):
    """Some managed prompts failed; the others were refreshed. Carries the whole report."""

    def __init__(self, report: NightlyReport):
        self.report = report
        failures = "; ".join(f"{d.name}: {d.reason}" for d in report.decisions if d.outcome == "failed")
        super().__init__(f"nightly refresh: {len(report.failed)} of {len(report.decisions)} prompt(s) failed: {failures}")


def optimize_candidate(managed: ManagedPrompt, start: str | None) -> Proposal:
    """The optimisation flow (as a subflow) from `start`; its best prompt is the candidate."""
    summary = optimize_prompt(managed.optimize_from(start))
    return Proposal(
        start_prompt=summary.initial_prompt,
        prompt=summary.best_prompt,
        training_loss=summary.best_loss,
        start_training_loss=summary.initial_loss,
        run_id=summary.run_id,
    )


@flow(name="nightly-refresh")
def nightly_refresh(config: NightlyConfig) -> NightlyReport:
    """Refresh every managed prompt; promote a candidate only when it wins on held-out data by the margin."""
    return refresh(config)


def refresh(config: NightlyConfig, propose: Proposer = optimize_candidate) -> NightlyReport:
    """The refresh inside a running flow, with `propose` making each candidate (in this process, or fanned out)."""
    the_plan = plan(config)
    deployment = fanout.deployment_for(the_plan.fan_out.mode, the_plan.fan_out.deployment)  # before a record exists
    run = runs.start_record_run(
        the_plan.experiment,
        run_name=f"nightly {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        tags={"pmpo.kind": "nightly", "prefect.flow_run_id": str(flow_run.get_id() or "")},
    )
    if deployment is None:
        proposed = [_isolated(e.label, lambda e=e: _propose_here(e.managed(), propose)) for e in the_plan.entries]
    else:
        proposed = _propose_on_pool(the_plan, deployment)
    # Every optimisation has ended before the first decision: the decisions see all candidates of the night.
    decisions = [
        p if isinstance(p, Decision) else _linked(_isolated(p.managed.name, lambda p=p: decide(p, the_plan.rule, run.run_id)), p)
        for p in proposed
    ]
    report = NightlyReport(run_id=run.run_id, experiment=run.experiment, decisions=decisions)
    _record(run, report)
    if report.failed:
        raise NightlyRefreshFailed(report)
    return report


@dataclass(frozen=True)
class _Proposed:
    """A prompt whose candidate is made, waiting for its decision."""

    managed: ManagedPrompt
    production: PromptVersion | None  # production when the optimisation started from it
    proposal: Proposal


def _linked(decision: Decision, p: _Proposed) -> Decision:
    """A decision that failed while judging still names the flow run that made its candidate."""
    if decision.flow_run_id or not p.proposal.flow_run_id:
        return decision
    return decision.model_copy(update={"flow_run_id": p.proposal.flow_run_id, "flow_run_url": p.proposal.flow_run_url})


def _propose_here(managed: ManagedPrompt, propose: Proposer) -> _Proposed:
    production = prompts.get_version(managed.name, PRODUCTION)
    return _Proposed(managed, production, propose(managed, production.text if production else None))


def _propose_on_pool(the_plan: Plan, deployment: str) -> list[_Proposed | Decision]:
    """Start every prompt's flow run, wait until all have ended, then read each one's candidate."""
    started: list[tuple[ManagedPrompt, PromptVersion | None, fanout.Child] | Decision] = []
    for entry in the_plan.entries:
        started.append(_isolated(entry.label, lambda entry=entry: _launch(entry.managed(), deployment)))
    children = [s[2] for s in started if not isinstance(s, Decision)]
    get_run_logger().info("waiting for %d flow run(s) of %s: %s", len(children), deployment, ", ".join(c.url for c in children))
    ended = fanout.wait_all(children, poll_s=the_plan.fan_out.poll_s, timeout_s=the_plan.fan_out.timeout_s)
    proposed: list[_Proposed | Decision] = []
    for s in started:
        if isinstance(s, Decision):
            proposed.append(s)
            continue
        managed, production, child = s
        decision = _isolated(managed.name, lambda: _proposed_by(managed, production, child, ended[child.flow_run_id]))
        proposed.append(decision.model_copy(update={"flow_run_id": child.flow_run_id, "flow_run_url": child.url})
                        if isinstance(decision, Decision) else decision)  # fmt: skip
    return proposed


def _launch(managed: ManagedPrompt, deployment: str) -> tuple[ManagedPrompt, PromptVersion | None, fanout.Child]:
    production = prompts.get_version(managed.name, PRODUCTION)
    child = fanout.launch(deployment, managed.name, managed.optimize_from(production.text if production else None))
    get_run_logger().info("%s: started flow run %s (%s)", managed.name, child.flow_run_id, child.url)
    return managed, production, child


def _proposed_by(managed: ManagedPrompt, production: PromptVersion | None, child: fanout.Child, ended: fanout.Ended) -> _Proposed:
    record = fanout.outcome(child, ended)
    proposal = Proposal(
        start_prompt=record.initial_prompt, prompt=record.best_prompt, training_loss=record.best_loss,
        start_training_loss=record.initial_loss, run_id=record.run_id, flow_run_id=child.flow_run_id,
        flow_run_url=child.url,
    )  # fmt: skip
    return _Proposed(managed, production, proposal)


def _isolated(label: str, step: Callable[[], Any]) -> Any:
    """`step()`, or a failed Decision naming why: one prompt's failure must leave the others running."""
    log = get_run_logger()
    try:
        return step()
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) if isinstance(exc, PmpoError) else f"{type(exc).__name__}: {exc}"
        log.error("%s: FAILED: %s", label, reason, exc_info=not isinstance(exc, PmpoError))
        return Decision(name=label, outcome="failed", reason=" ".join(reason.split()))


def decide(proposed: _Proposed, rule: PromotionRule, nightly_run_id: str) -> Decision:
    """Judge the candidate on held-out data, register it with its decision, and promote it if it won."""
    decision = refresh_one(proposed.managed, rule, proposed.production, proposed.proposal, nightly_run_id)
    get_run_logger().info("%s", _line(decision))
    return decision


def refresh_one(
    managed: ManagedPrompt, rule: PromotionRule, production: PromptVersion | None, proposal: Proposal, nightly_run_id: str
) -> Decision:
    """Judge `proposal` against production on held-out data, register it with its decision, promote it if it won."""
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
        runs.tag_run(proposal.run_id, {"pmpo.nightly.decision": outcome, "pmpo.nightly.reason": reason,
                                           "pmpo.nightly.run_id": nightly_run_id, **_flow_run_tags(proposal)})  # fmt: skip
    return Decision(
        name=name, outcome=outcome, reason=reason, production_version=version if promote else production.version,
        candidate_version=version, production=baseline, candidate=candidate, training_loss=proposal.training_loss,
        run_id=proposal.run_id, flow_run_id=proposal.flow_run_id, flow_run_url=proposal.flow_run_url,
    )  # fmt: skip


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
    return {"pmpo.nightly.flow_run_id": p.flow_run_id, "pmpo.nightly.flow_run_url": p.flow_run_url or ""} if p.flow_run_id else {}


def _record(run: runs.TrackedRun, report: NightlyReport) -> None:
    """The refresh's run: a decisions table, one tag and the held-out losses per prompt."""
    ds = report.decisions
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
    runs.finish(run, "FAILED" if report.failed else "FINISHED")


def _line(d: Decision) -> str:
    """The decision as one log line."""
    if d.outcome == "promoted":
        return f"{d.name}: PROMOTED v{d.candidate_version} to production: {d.reason}"
    kept = f"kept production v{d.production_version}"
    if d.candidate_version:
        kept += f" (candidate v{d.candidate_version})"
    return f"{d.name}: {kept}: {d.reason}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

