"""The nightly refresh fanned out over a work pool: each prompt's optimisation is its own flow run of the
`optimize` deployment, started as a sub-run of the refresh, so every worker polling the pool takes its share.

Prefect does the distribution; this module only starts the runs, waits until every one has ended and reads what
each left in MLflow (its flow run id is a tag of its optimisation run). How many run at once is the `optimize`
deployment's concurrency limit, which the Prefect server enforces across every worker and machine: it counts
only the optimisations, never the refresh that waits for them, so no limit setting can deadlock the refresh.

The refresh fans out only when a Prefect server runs it (not the serverless API of `pmpo nightly`) and the
deployment exists on a work pool; a deployment served by `flow.serve` has no pool to share and a runner whose
only slot the waiting refresh would hold, so then the prompts run in this process, as they always did.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from flows.config import OptimizeConfig
from pmpo.errors import PmpoError
from tasks.mlflow import queries


class ChildRunFailed(PmpoError):
    """A prompt's flow run did not finish, or left no optimisation record to judge."""


class PrefectUnavailable(PmpoError):
    """The Prefect server failed the refresh's polls for longer than an outage is allowed to last."""


# A database restart under the server answers polls with 500s or refused connections for seconds to a minute:
# the waiting refresh rides it out, and gives up with one line only past this.
OUTAGE_S = 120.0


@dataclass(frozen=True)
class Child:
    """One prompt's flow run, started on the work pool."""

    name: str
    flow_run_id: str
    url: str  # the run's page in the Prefect UI
    experiment: str  # where its optimisation run is recorded
    adopted: bool = False  # started by an earlier refresh that did not live to wait for it


@dataclass(frozen=True)
class Ended:
    """How a child run ended."""

    state: str  # Prefect's state name: Completed, Failed, Crashed, Cancelled, ...
    completed: bool
    message: str


def deployment_for(mode: str, name: str) -> str | None:
    """The deployment to fan out on, or None to run the prompts in this process."""
    if mode == "in_process":
        return None
    on_pool = _on_a_pool(name) if get_current_settings().api.url else False  # no URL: the serverless API
    if mode == "work_pool" and not on_pool:
        raise PmpoError(
            f"fan_out: work_pool: no deployment {name!r} on a work pool of a Prefect server (PREFECT_API_URL)"
        )
    return name if on_pool else None


def _on_a_pool(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).work_pool_name is not None
        except ObjectNotFound:
            return False


def launch(deployment: str, name: str, config: OptimizeConfig) -> Child:
    """Start the prompt's optimisation as a flow run of `deployment` (a sub-run of this one); return at once.

    A run of the same optimisation that has not ended yet (left by a refresh that was killed while it waited) is
    waited for instead: a second copy would compute the same candidates again beside it.
    """
    parameters = {"config": config.model_dump(mode="json", by_alias=True)}
    tag = child_tag(parameters)
    running = _unfinished(deployment, tag)
    if running is not None:
        return Child(name, str(running.id), run_url(running), config.experiment or config.task or name, adopted=True)
    run = run_deployment(
        deployment,
        # by_alias: the names the deployment's parameter schema shows (rewrite.k, rewrite.n), which the server checks.
        parameters=parameters,
        flow_run_name=f"nightly {name}",
        timeout=0,  # start it and go on: the pool's workers run the children side by side
        tags=["pmpo", "nightly", tag],
        as_subflow=True,
    )
    return Child(name, str(run.id), run_url(run), config.experiment or config.task or name)


def child_tag(parameters: dict[str, Any]) -> str:
    """The tag naming one optimisation by its parameters (the config, with the prompt it starts from)."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    return f"pmpo-child:{digest}"


def _unfinished(deployment: str, tag: str) -> FlowRun | None:
    """A run of `deployment` tagged `tag` that is scheduled, waiting or running; None when there is none."""
    waiting = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[client.read_deployment_by_name(deployment).id]),
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=waiting)),
            ),
            limit=1,
        )
    return found[0] if found else None


def wait_all(
    children: list[Child], poll_s: float = 5.0, timeout_s: float | None = None, outage_s: float = OUTAGE_S
) -> dict[str, Ended]:
    """Block until every child run has ended (or `timeout_s` passed: the rest count as not finished)."""
    ended: dict[str, Ended] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failing_since: float | None = None
    with get_client(sync_client=True) as client:
        while len(ended) < len(children):
            try:
                for child in children:
                    if child.flow_run_id not in ended:
                        state = client.read_flow_run(uuid.UUID(child.flow_run_id)).state
                        if state is not None and state.is_final():
                            ended[child.flow_run_id] = Ended(state.name, state.is_completed(), state.message or "")
                failing_since = None
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                failing_since = _outage(exc, failing_since, outage_s)
            if len(ended) < len(children):
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(poll_s)
    for child in children:
        ended.setdefault(child.flow_run_id, Ended("NotFinished", False, f"still running after {timeout_s} s"))
    return ended


def _outage(exc: httpx.HTTPError, since: float | None, outage_s: float) -> float:
    """When the server began failing polls; PrefectUnavailable once it has failed for longer than `outage_s`."""
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
        raise exc  # a request the server refuses is a bug, not an outage
    now = time.monotonic()
    since = now if since is None else since
    if now - since > outage_s:
        api = get_current_settings().api.url
        raise PrefectUnavailable(
            f"the Prefect server at {api} failed every poll for {outage_s:.0f} s while the refresh waited for its "
            f"runs ({type(exc).__name__}: {str(exc).splitlines()[0]}); the runs go on: the next refresh waits for "
            "them, or resumes them from the task cache"
        ) from None
    return since


def outcome(child: Child, ended: Ended) -> queries.FlowRunRecord:
    """The child's optimisation record; ChildRunFailed (naming the run) when it did not finish or left none."""
    if not ended.completed:
        why = f": {ended.message}" if ended.message else ""
        raise ChildRunFailed(f"flow run {child.flow_run_id} ended {ended.state}{why} ({child.url})")
    record = queries.record_of_flow_run(child.experiment, child.flow_run_id)
    if record is None or record.status != "FINISHED":
        raise ChildRunFailed(
            f"flow run {child.flow_run_id} completed but left no finished MLflow run in {child.experiment!r}"
        )
    return record


def run_url(run: FlowRun | Any) -> str:
    """The flow run's page in the Prefect UI (its API path when no UI address is known)."""
    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{run.id}" if ui else f"flow-run/{run.id}"
