"""The Prompt Registry: an optimisation's best prompt registered with its loss and run, versions read by
number or alias (`production`, `latest`), aliases moved, version tags set.

A prompt text registered again under the same name reuses its version. A chat prompt is registered as its list
of messages, so the registry keeps the format the application loads; read back, it is pmpo's one string form of
its messages (pmpo.text.template).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pmpo.text.template import from_registry, to_registry
from tasks.environment import shown_tracking_uri
from tasks.mlflow.runs import TrackedRun
from tasks.mlflow.store import TrackingError, client, held, safe_name

PRODUCTION = "production"
LATEST = "latest"  # resolved by MLflow itself to the newest version
PLACEMENT_TAG = "pmpo.placement"  # on a prompt version: where the prompt goes in the model's input
RUN_IDS_TAG = "pmpo.run_ids"  # on a prompt version: every run that produced its text, comma-separated


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


def prompt_name(task: str) -> str:
    """A Prompt Registry name for a task (letters, digits, _ . - only)."""
    return safe_name(task).strip("-") or "prompt"


def register_prompt(
    task: str, prompt: str, loss: float, run: TrackedRun, placement: str = "", model_config: dict | None = None
) -> tuple[str, int]:
    """Register `prompt` under the task's name with its loss and run id; the same text reuses its version.

    `placement` (`system`, `user`, `plain`, `chat`: pmpo.text.rendering.placed) is tagged `pmpo.placement` on a
    new version, so whoever deploys it renders the prompt where its loss was measured. `model_config` (MLflow's
    PromptModelConfig fields: model_name, extra_params) is the version's "Model Config": the model it was
    optimised for and how the prompt is placed.

    A reused version keeps its `run_id` tag (the run that first produced it) and gains this run in
    `pmpo.run_ids`. `prompts:/<name>@latest` loads the newest version: MLflow reserves the alias `latest`
    and resolves it itself (setting it explicitly is refused).
    """
    c = client()
    name = prompt_name(task)
    existing = _same_text_version(c, name, prompt)
    if existing is not None:
        runs = [r for r in existing.tags.get(RUN_IDS_TAG, existing.tags.get("run_id", "")).split(",") if r]
        if run.run_id not in runs:
            c.set_prompt_version_tag(name, existing.version, RUN_IDS_TAG, ",".join([*runs, run.run_id]))
        return name, int(existing.version)
    with held():
        version = mlflow.genai.register_prompt(
            name=name,
            template=to_registry(prompt),  # a chat prompt stays a list of messages, as the application loads it
            commit_message=f"pmpo run {run.run_id}: training loss {loss:.4f}",
            tags={
                "loss": f"{loss:.6f}",
                "run_id": run.run_id,
                RUN_IDS_TAG: run.run_id,
                **({PLACEMENT_TAG: placement} if placement else {}),
            },
            model_config=model_config,
        )
    return name, int(version.version)


def load_registered_prompt(uri: str) -> str:
    """The text of a registered prompt, e.g. `prompts:/sentiment@latest` or `prompts:/sentiment/2` (a chat
    prompt as pmpo's one string form of its messages, pmpo.text.template)."""
    client()
    try:
        with held():
            return from_registry(mlflow.genai.load_prompt(uri).template)
    except MlflowException as exc:
        raise TrackingError(
            f"prompt {uri!r} not found in {shown_tracking_uri()}: {exc.message.splitlines()[0]}"
        ) from None


def get_version(name: str, ref: str | int) -> PromptVersion | None:
    """Version `ref` of `name` (a number, or an alias such as `production` / `latest`); None when absent."""
    c = client()
    try:
        found = (
            c.get_prompt_version(name, int(ref))
            if str(ref).isdigit()
            else c.get_prompt_version_by_alias(name, str(ref))
        )
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
        raise TrackingError(
            f"prompt {name!r} has no version or alias {ref!r} in {shown_tracking_uri()} (versions: {known})"
        )
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
    found = _same_text_version(client(), name, text)
    return None if found is None else int(found.version)


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


def prompt_tags(name: str) -> dict[str, str]:
    """The tags of the prompt itself, not of one version (empty: no tags, or no such prompt)."""
    try:
        found = client().get_prompt(name)
    except MlflowException:
        return {}
    return dict(found.tags) if found is not None else {}


def tag_prompt(name: str, tags: dict[str, str]) -> None:
    """Set tags on the prompt itself (e.g. how many nightly decisions it has had)."""
    c = client()
    for key, value in tags.items():
        c.set_prompt_tag(name, key, str(value))


def _same_text_version(c: MlflowClient, name: str, text: str):
    """The newest version of prompt `name` whose text is `text` (None: none, or no such prompt)."""
    try:
        versions = c.search_prompt_versions(name)
    except MlflowException:
        return None
    same = [v for v in versions if from_registry(v.template) == text]
    return max(same, key=lambda v: int(v.version), default=None)
