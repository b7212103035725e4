"""The command-line flags that set one config field each, and the reverse map errors use to name the flag."""

from __future__ import annotations

# The flags that set one config field, by the field's path in OptimizeConfig (evaluate's flags are a subset, with the
# same paths in EvaluateConfig). Kept here, without importing the models, so `pmpo --help` stays fast;
# tests/unit/pmpo_cli/test_flags.py checks each flag's choices, type and stated default against its field's.
FIELD_FLAGS = {
    "--data": "data.source",
    "--format": "data.format",
    "--limit": "data.limit",
    "--description": "data.description",
    "--model": "model.spec",
    "--dtype": "model.dtype",
    "--device": "model.device",
    "--backend": "model.backend",
    "--base-url": "model.base_url",
    "--served-model": "model.model",
    "--api-key-env": "model.api_key_env",
    "--tokenizer": "model.tokenizer",
    "--max-concurrency": "model.max_concurrency",
    "--seed": "seed",
    "--eval-examples": "eval.max_examples",
    "--mc-objective": "scoring.mc_objective",
    "--beta": "scoring.beta",
    "--iterations": "iterations",
    "--task": "task",
    "--experiment": "experiment",
    "--racing": "racing.enabled",
    "--masking": "masking",
    "--units": "units",
    "--balance-labels": "balance_labels",
    "--gate-z": "selection.gate_z",
    "--tempered-gate": "selection.tempered_gate",
    "--patience": "patience",
    "--demos": "demonstrations.k",
    "--rewriter-spec": "rewriter.spec",
    "--rewriter-base-url": "rewriter.base_url",
    "--rewriter-model": "rewriter.model",
    "--rewriter-api-key-env": "rewriter.api_key_env",
    "--dask-workers": "task_runner.n_workers",
    "--max-tokens": "budget.max_tokens",
    "--max-seconds": "budget.max_seconds",
}


def flag_names() -> dict[str, str]:
    """Config field path -> the flag that sets it, for errors about values the user gave as flags."""
    names = {path: flag for flag, path in FIELD_FLAGS.items()}
    # Flags that set a field under another name, or several fields at once.
    names |= {
        "train_cap": "--train-size",
        "train_fraction": "--train-size",
        "data.columns": "--column",
        "data": "--data",
        "prompt": "--prompt",
        "eval.generate": "--no-generate",
        "task_runner.address": "--dask",
        "task_runner": "--dask",
        "promotion.margin": "--margin",
        "promotion.max_accuracy_drop": "--max-accuracy-drop",
        "prompts_file": "--config",
    }
    return names
