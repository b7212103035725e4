"""Shared helpers of the pipeline tests: a tiny but complete optimisation config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPT = "Read the review. Answer with one word."


def tiny_values(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Config values for a fast run on the tiny random model: a few training examples (4 of 40 at seed 0), short
    rewrites."""
    values: dict[str, Any] = {
        "data": {"source": "builtin:sentiment", "limit": 40},
        "model": {"spec": str(model_dir), "dtype": "float32"},
        "prompt": PROMPT,
        "iterations": 2,
        "rewrite": {"k": 2, "n": 2, "max_new_tokens": 12},
        "eval": {"max_examples": 6, "max_new_tokens": 3},
    }
    values.update(overrides)
    return values


def tiny_config(model_dir: Path, **overrides: Any):
    """The same, validated as the flow's config."""
    from flows.config import OptimizeConfig

    return OptimizeConfig.model_validate(tiny_values(model_dir, **overrides))


def forget_process_scores() -> None:
    """Drop this process's scorers (their memo of scored pairs; loaded models stay): a test that counts the work
    a run does must not find pairs an earlier test in the same process scored already."""
    import tasks.models

    with tasks.models._LOCK:
        tasks.models._SCORERS.clear()
