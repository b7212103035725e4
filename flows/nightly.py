"""The nightly refresh: for each managed prompt, optimise from the current production version on the current
data, judge the candidate against production on the same held-out examples (a fresh draw per decision), and
promote it only when the paired interval of the change clears the margin (flows.promotion decides and records). Each decision goes to the flow's log, the
candidate's registry version tags, the optimisation run's tags and the refresh's own MLflow run.

One failing prompt does not stop the others: the refresh finishes them all, then fails naming the ones that
failed. The step that makes a candidate is a parameter of `refresh` (tests pass a deliberately bad one).

Against a Prefect server whose `optimize` deployment sits on a work pool, the optimisations fan out: each prompt
is its own flow run on the pool (flows.fanout), and the decisions are made once every one of them has ended,
each linking its flow run. Otherwise they run one after another in this process.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows import fanout, promotion
from flows.managed import ManagedPrompt, NightlyConfig, Plan, PromotionRule, plan
from flows.optimize import optimize_prompt
from flows.promotion import Decision, Proposal
from pmpo.errors import PmpoError
from tasks.mlflow import prompts, runs
from tasks.mlflow.prompts import PRODUCTION, PromptVersion

Proposer = Callable[[ManagedPrompt, "str | None"], Proposal]


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
        super().__init__(
            f"nightly refresh: {len(report.failed)} of {len(report.decisions)} prompt(s) failed: {failures}"
        )


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
    """Refresh every managed prompt; promote a candidate only when its held-out interval clears the margin."""
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
        p
        if isinstance(p, Decision)
        else _linked(_isolated(p.managed.name, lambda p=p: _decide(p, the_plan.rule, run.run_id)), p)
        for p in proposed
    ]
    report = NightlyReport(run_id=run.run_id, experiment=run.experiment, decisions=decisions)
    promotion.record(run, report.decisions)
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
    get_run_logger().info(
        "waiting for %d flow run(s) of %s: %s", len(children), deployment, ", ".join(c.url for c in children)
    )
    ended = fanout.wait_all(children, poll_s=the_plan.fan_out.poll_s, timeout_s=the_plan.fan_out.timeout_s)
    proposed: list[_Proposed | Decision] = []
    for s in started:
        if isinstance(s, Decision):
            proposed.append(s)
            continue
        managed, production, child = s
        decision = _isolated(managed.name, lambda: _proposed_by(managed, production, child, ended[child.flow_run_id]))
        proposed.append(
            decision.model_copy(update={"flow_run_id": child.flow_run_id, "flow_run_url": child.url})
            if isinstance(decision, Decision)
            else decision
        )
    return proposed


def _launch(managed: ManagedPrompt, deployment: str) -> tuple[ManagedPrompt, PromptVersion | None, fanout.Child]:
    production = prompts.get_version(managed.name, PRODUCTION)
    child = fanout.launch(deployment, managed.name, managed.optimize_from(production.text if production else None))
    if child.adopted:  # a warning: `pmpo nightly` shows warnings only, and an earlier refresh died
        get_run_logger().warning(
            "%s: waiting for the unfinished flow run %s (%s), left by an earlier refresh, instead of starting a "
            "second copy",
            managed.name,
            child.flow_run_id,
            child.url,
        )
    else:
        get_run_logger().info("%s: started flow run %s (%s)", managed.name, child.flow_run_id, child.url)
    return managed, production, child


def _proposed_by(
    managed: ManagedPrompt, production: PromptVersion | None, child: fanout.Child, ended: fanout.Ended
) -> _Proposed:
    record = fanout.outcome(child, ended)
    proposal = Proposal(
        start_prompt=record.initial_prompt,
        prompt=record.best_prompt,
        training_loss=record.best_loss,
        start_training_loss=record.initial_loss,
        run_id=record.run_id,
        flow_run_id=child.flow_run_id,
        flow_run_url=child.url,
    )
    return _Proposed(managed, production, proposal)


def _isolated(label: str, step: Callable[[], Any]) -> Any:
    """`step()`, or a failed Decision naming why: one prompt's failure must leave the others running."""
    log = get_run_logger()
    try:
        return step()
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) if isinstance(exc, PmpoError) else f"{type(exc).__name__}: {exc}"
        log.error("%s: FAILED: %s", label, reason, exc_info=not isinstance(exc, PmpoError))
        return Decision(name=label, outcome="failed", why="failed", reason=" ".join(reason.split()))


def _decide(proposed: _Proposed, rule: PromotionRule, nightly_run_id: str) -> Decision:
    """Judge the candidate on held-out data, register it with its decision, promote it if it won; log the decision."""
    decision = promotion.decide(proposed.managed, rule, proposed.production, proposed.proposal, nightly_run_id)
    log = get_run_logger()
    log.info("%s", promotion.line(decision))
    if decision.heldout and decision.heldout.warning:
        log.warning("%s: %s", decision.name, decision.heldout.warning)
    return decision
