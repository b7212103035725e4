"""The Prompt Registry side of the MLflow record: versions, aliases, version tags, and runs that are not
optimisations (a nightly refresh, a comparison).

It works through `tasks.tracking`'s client: tracking stays the one module that imports mlflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pmpo.text.template import from_registry, to_registry
from tasks.environment import shown_tracking_uri
from tasks.tracking import MlflowException, TrackedRun, TrackingError, client, experiment_id

PRODUCTION = "production"
LATEST = "latest"  # resolved by MLflow itself to the newest version


@dataclass(frozen=True)
class PromptVersion:
    """One registered version of a prompt."""

    name: str
    version: int
    text: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        """`prompts:/name/version`, the form `mlflow.genai.load_prompt` takes."""
        return f"prompts:/{self.name}/{self.version}"


def get_version(name: str, ref: str | int) -> PromptVersion | None:
    """Version `ref` of `name` (a number, or an alias such as `production` / `latest`); None when absent."""
    c = client()
    try:
        found = c.get_prompt_version(name, int(ref)) if str(ref).isdigit() else c.get_prompt_version_by_alias(name, str(ref))
    except MlflowException:
        return None  # no such prompt, version or alias: the caller decides whether that is a mistake
    if found is None:
        return None
    text = from_registry(found.template)  # a chat prompt: its messages as one string (pmpo.text.template)
    return PromptVersion(found.name, int(found.version), text, dict(found.tags), tuple(found.aliases))


def require_version(name: str, ref: str | int) -> PromptVersion:
    """Like get_version, but a missing version is the user's mistake."""
    found = get_version(name, ref)
    if found is None:
        known = ", ".join(str(v) for v in version_numbers(name))
        if not known:
            raise TrackingError(f"no prompt named {name!r} in the registry at {shown_tracking_uri()}")
        raise TrackingError(f"prompt {name!r} has no version or alias {ref!r} in {shown_tracking_uri()} (versions: {known})")
    return found


def version_numbers(name: str) -> list[int]:
    """The version numbers of a prompt, oldest first (empty when it is not registered)."""
    try:
        found = client().search_prompt_versions(name)
    except MlflowException:
        return []
    return sorted(int(v.version) for v in found)


def find_version(name: str, text: str) -> int | None:
    """The newest version whose text is exactly `text` (None: no such version)."""
    try:
        found = client().search_prompt_versions(name)
    except MlflowException:
        return None
    return max((int(v.version) for v in found if from_registry(v.template) == text), default=None)


def register(name: str, text: str, message: str, tags: dict[str, str]) -> int:
    """A new version of `name` with `tags`; returns its number. A chat prompt is registered as its list of
    messages, so the registry keeps the format the application loads."""
    version = client().register_prompt(name, to_registry(text), commit_message=message, tags=tags)
    return int(version.version)


def set_alias(name: str, alias: str, version: int) -> None:
    """Point `alias` (e.g. production) at `version`."""
    client().set_prompt_alias(name, alias, version)


def tag_version(name: str, version: int, tags: dict[str, str]) -> None:
    """Set tags on one version (e.g. the decision a nightly refresh took about it)."""
    c = client()
    for key, value in tags.items():
        c.set_prompt_version_tag(name, version, key, str(value))


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Set tags on a run known by id (e.g. an optimisation run's nightly decision)."""
    c = client()
    for key, value in tags.items():
        c.set_tag(run_id, key, str(value))


def start_record_run(experiment: str, run_name: str, tags: dict[str, str]) -> TrackedRun:
    """A fresh run for a record that is not an optimisation (never resumed: each refresh or comparison is new)."""
    c = client()
    exp_id = experiment_id(c, experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return TrackedRun(run.info.run_id, exp_id, experiment, resumed=False, logged_through=-1)


def run_json(run_id: str, artifact_file: str) -> dict | None:
    """A JSON artifact of a run (e.g. the config.json every optimisation run keeps); None when absent."""
    c = client()
    try:
        path = c.download_artifacts(run_id, artifact_file)
    except (MlflowException, OSError):
        return None
    with open(path) as f:
        return json.load(f)
