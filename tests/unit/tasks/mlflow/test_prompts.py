"""The Prompt Registry round trip: versions by number and by `latest`, a clear error for a missing prompt."""

from __future__ import annotations

import pytest

from pmpo.errors import PmpoError
from tasks.mlflow import prompts, runs


def test_prompt_registry_round_trip(exp):
    run = runs.start_run(exp, "key", "a", params={}, tags={})
    name, v1 = prompts.register_prompt("builtin:sentiment/x", "First prompt.", 1.5, run)
    _, v2 = prompts.register_prompt("builtin:sentiment/x", "Second prompt.", 1.2, run)

    assert name == "builtin-sentiment-x" and v2 == v1 + 1
    assert prompts.load_registered_prompt(f"prompts:/{name}@latest") == "Second prompt."
    assert prompts.load_registered_prompt(f"prompts:/{name}/{v1}") == "First prompt."
    with pytest.raises(PmpoError, match="not found"):
        prompts.load_registered_prompt("prompts:/no-such-prompt@latest")
