"""Prefect flows that compose pmpo's tasks: optimize_prompt, evaluate_prompt, nightly_refresh, compare_prompts."""

import tasks  # noqa: F401  (first: it sets telemetry and server defaults before prefect is imported)
