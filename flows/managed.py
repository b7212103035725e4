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
from flows.heldout import Score
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
    """When a candidate replaces production: held-out numbers only, never the training loss."""

    # Relative, so one setting fits tasks whose answers (and so summed losses) differ in length. 1% is above the
    # run-to-run noise of a fixed held-out set (there is none: scoring is deterministic) and of a changed prompt
    # on a few dozen examples, yet small enough that real gains pass.
    margin: float = Field(0.01, ge=0, lt=1, description="held-out loss must be at least this fraction lower")
    # A lower loss with fewer right answers is not an improvement a user would accept.
    max_accuracy_drop: float | None = Field(
        0.0, ge=0, le=1, description="allowed drop in held-out accuracy (None: ignore)"
    )

    def decide(self, production: Score, candidate: Score) -> tuple[bool, str]:
        """(promote?, why) for a candidate against production on the same held-out examples."""
        change = (candidate.loss - production.loss) / abs(production.loss) if production.loss else 0.0
        loss = f"held-out loss {production.loss:.4f} -> {candidate.loss:.4f} ({change:+.1%}; needed -{self.margin:.1%})"
        accuracy = ""
        if production.accuracy is not None and candidate.accuracy is not None:
            accuracy = f"; accuracy {production.accuracy:.1%} -> {candidate.accuracy:.1%}"
        if candidate.loss >= production.loss * (1 - self.margin):
            return False, f"not better by the margin: {loss}{accuracy}"
        floor = (
            production.accuracy - self.max_accuracy_drop - 1e-9
            if accuracy and self.max_accuracy_drop is not None
            else None
        )
        if floor is not None and candidate.accuracy < floor:
            return False, f"accuracy drops beyond {self.max_accuracy_drop:.1%}: {loss}{accuracy}"
        return True, f"better: {loss}{accuracy}"


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
