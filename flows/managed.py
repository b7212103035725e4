"""What the nightly refresh manages: the prompts (name, data, model, initial prompt, optimisation settings),
the promotion rule, and the file that lists them.

The file is read when the flow runs, not when it is deployed: an edit applies from the next night on. Every entry
is validated before the refresh starts anything: a key typo is a config error naming the file, the entry and the
key, not a failed prompt inside a refresh run. (Broken data still fails its prompt alone: it is read later.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from flows.config import ConfigError, OptimizeConfig, build, merge, read_config_file
from pmpo.evaluation.gate import Verdict, judge
from pmpo.evaluation.heldout import Evaluation
from pmpo.settings import Strict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ManagedPrompt(Strict):
    """One prompt the refresh keeps improving: its registry name and how to optimise it."""

    name: str = Field(description="Prompt Registry name (also the MLflow experiment of its optimisation runs)")
    optimize: OptimizeConfig = Field(
        default_factory=OptimizeConfig,
        description="data, model, initial prompt (used until a production version exists) and settings",
    )

    @field_validator("name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} is not a registry name: use letters, digits, _ . - (starting with a letter or digit)"
            )
        return name

    def optimize_from(self, prompt: str | None) -> OptimizeConfig:
        """The optimisation config starting from `prompt` (None: the initial one), filed under this name.

        The refresh registers the candidate itself, with its decision, so the optimisation run does not.
        """
        update: dict[str, Any] = {"task": self.name, "register_prompt": False}
        if prompt is not None:
            update["prompt"] = prompt
        return self.optimize.model_copy(update=update)


class PromotionRule(Strict):
    """When a candidate replaces production: paired intervals on held-out data only, never the training loss.

    The rule itself is pmpo.evaluation.gate's; the fresh held-out draw per decision is pmpo.evaluation.rotation's.
    """

    # The interval, not this margin, guards against noise; the margin guards against churn: a new production
    # version for a gain nobody would notice. Relative, so one setting fits tasks whose answers (and so summed
    # losses) differ in length. 1% is small enough that a real gain on a few dozen examples clears it.
    margin: float = Field(
        0.01, ge=0, lt=1, description="the held-out loss interval must lie at least this fraction below production's"
    )
    # A lower loss with fewer right answers is not an improvement a user would accept (it is often a shifted label
    # prior). Non-inferiority on the interval's low end: 0 would refuse any candidate that flips one answer either
    # way, since the interval of a zero change always reaches below zero. Measured (paired bootstrap, 95%): 0.1
    # passes a candidate that flips up to 4 answers each way of 50 and refuses one that loses 3 and gains at most
    # 1 (low ends -0.10 and -0.12); on 24 examples it refuses any lost answer (-0.125): judge on more to allow that.
    max_accuracy_drop: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="the accuracy change's interval may reach down to minus this (acc_norm, else generated; "
        "None: ignore accuracy)",
    )
    # The rule reads one end of the interval, so a candidate exactly at the margin is promoted about 2.5% of the
    # nights at 95%; a higher level needs more held-out examples before anything is promoted.
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the paired bootstrap intervals")
    # Each decision leaks (at most) one bit, promote or not, about the examples that judged it; with fresh draws
    # an example judges about n/N of the decisions. Ten per example on average is a point to ask for more data,
    # not a proven bound: a pool 4 times the draw reaches it after 40 decisions (10 N/n), one 37 times the draw
    # lasts a year of nightly decisions, and a pool no larger than the draw is flagged at once.
    reuse_budget: int = Field(
        10, ge=1, description="warn when a decision's held-out examples judged this many earlier decisions on average"
    )

    def decide(self, production: Evaluation, candidate: Evaluation, *, seed: int) -> Verdict:
        """The gate's verdict on `candidate` against production, both on the same held-out examples."""
        return judge(
            production,
            candidate,
            margin=self.margin,
            max_accuracy_drop=self.max_accuracy_drop,
            confidence=self.confidence,
            seed=seed,
        )


class FanOut(Strict):
    """Where the prompts' optimisations run: in this process, or as flow runs of a deployment on a work pool."""

    # auto: on the pool when a Prefect server runs the refresh and the deployment is there, else in this process
    # (so `pmpo nightly` without a server behaves as it always did).
    mode: Literal["auto", "in_process", "work_pool"] = "auto"
    deployment: str = Field("optimize-prompt/optimize", description="the optimize deployment the prompts run as")
    # None: wait as long as the children run (the deployment's concurrency limit may queue them for hours).
    timeout_s: float | None = Field(
        None, gt=0, description="stop waiting for the prompts' runs after this many seconds"
    )
    poll_s: float = Field(5.0, gt=0, description="how often to ask the server whether the prompts' runs ended")


class NightlyConfig(Strict):
    """The nightly refresh's parameter: a prompts file (its usual form), or the prompts inline."""

    prompts_file: str | None = Field(
        None, description="YAML/TOML file with `prompts:` (and optionally `promotion:`); read at run time"
    )
    prompts: list[ManagedPrompt] = Field(default_factory=list, description="prompts given inline (with no file)")
    promotion: PromotionRule = Field(default_factory=PromotionRule)
    experiment: str = Field("nightly-refresh", description="MLflow experiment of the refresh's own record")
    fan_out: FanOut = Field(default_factory=FanOut)


@dataclass(frozen=True)
class Entry:
    """One managed prompt as listed, validated (inline, or from its entry in the file)."""

    label: str  # its name, or its place in the file when it has none
    values: Any  # a ManagedPrompt (a raw entry is validated by `managed`)
    origin: str

    def managed(self) -> ManagedPrompt:
        """The validated prompt."""
        if isinstance(self.values, ManagedPrompt):
            return self.values
        return build(ManagedPrompt, self.values, origin=self.origin)


@dataclass(frozen=True)
class Plan:
    """What one refresh does: the rule, where it is recorded, and the prompts in order."""

    rule: PromotionRule
    experiment: str
    entries: tuple[Entry, ...]
    fan_out: FanOut = FanOut()


def plan(config: NightlyConfig) -> Plan:
    """Read the prompts file (if any): its settings, under the ones the parameter sets explicitly."""
    if config.prompts_file is None:
        if not config.prompts:
            raise ConfigError("nightly refresh: no prompts to manage: give prompts_file or prompts")
        entries = tuple(Entry(p.name, p, p.name) for p in config.prompts)
        return Plan(config.promotion, config.experiment, entries, config.fan_out)
    if config.prompts:
        raise ConfigError("nightly refresh: give prompts_file or prompts, not both")
    path = config.prompts_file
    values = read_config_file(Path(path).expanduser())
    raw = values.pop("prompts", None)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: expected `prompts:` with a list of prompts (name, optimize)")
    explicit = config.model_dump(include=config.model_fields_set - {"prompts_file"})
    settings = build(NightlyConfig, merge(values, explicit), origin=path)
    entries = [_entry(path, i, item) for i, item in enumerate(raw)]
    labels = [e.label for e in entries]
    twice = sorted({n for n in labels if labels.count(n) > 1})
    if twice:
        raise ConfigError(f"{path}: prompts: name(s) listed twice: {', '.join(twice)}")
    return Plan(settings.promotion, settings.experiment, tuple(entries), settings.fan_out)


def _entry(path: str, index: int, item: Any) -> Entry:
    name = item.get("name") if isinstance(item, dict) else None
    named = f" ({name})" if isinstance(name, str) and name else ""
    origin = f"{path}: prompts[{index}]{named}"
    label = name if isinstance(name, str) and name else f"prompts[{index}]"
    return Entry(label, build(ManagedPrompt, item, origin=origin), origin)  # a typo fails here, before any run
