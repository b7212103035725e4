"""From command-line arguments to flow config values: the config file first, flags override it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flows.config import ConfigError, build, merge, read_config_file, read_text
from pmpo.data.rows import ROLES, ColumnMap
from pmpo.errors import PmpoError


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """Config values of the options optimize and evaluate share."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    flags: dict[str, Any] = {}
    data = {
        k: v
        for k, v in (
            ("source", args.data),
            ("format", args.format),
            ("limit", args.limit),
            ("description", getattr(args, "description", None)),  # optimize only
        )
        if v is not None
    }
    if args.column:
        data["columns"] = columns(args.column)
    if data:
        flags["data"] = data
    model = {k: v for k, v in (("spec", args.model), ("dtype", args.dtype), ("device", args.device)) if v is not None}
    model |= remote_values(args)
    if model:
        flags["model"] = model
    rewriter = rewriter_flags(args)
    if rewriter:
        flags["rewriter"] = rewriter
    if args.prompt is not None:
        flags["prompt"] = args.prompt
    if args.prompt_file is not None:
        flags["prompt"] = read_prompt(args.prompt_file)
    if args.train_size is not None:  # an exact size: drawn from the whole data, up to N examples
        flags.update(train_fraction=1.0, train_cap=args.train_size)
    if args.seed is not None:
        flags["seed"] = args.seed
    scoring = {k: v for k, v in (("mc_objective", args.mc_objective), ("beta", args.beta)) if v is not None}
    if scoring:
        flags["scoring"] = scoring
    evals: dict[str, Any] = {"max_examples": args.eval_examples} if args.eval_examples is not None else {}
    if args.no_generate:
        evals["generate"] = False
    if evals:
        flags["eval"] = evals
    return merge(values, flags)


def remote_values(args: argparse.Namespace) -> dict[str, Any]:
    """The `model:` fields of the scoring-server flags that were given (absent flags: the namespace lacks them)."""
    pairs = (
        ("backend", "backend"),
        ("base_url", "base_url"),
        ("model", "served_model"),
        ("api_key_env", "api_key_env"),
        ("tokenizer", "tokenizer"),
        ("max_concurrency", "max_concurrency"),
    )
    return {field: v for field, flag in pairs if (v := getattr(args, flag, None)) is not None}


def rewriter_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The `rewriter` block the --rewriter-* flags give (optimize only); a URL implies backend openai, a spec local."""
    names = {
        "spec": "rewriter_spec",
        "base_url": "rewriter_base_url",
        "model": "rewriter_model",
        "api_key_env": "rewriter_api_key_env",
    }
    block = {k: getattr(args, a) for k, a in names.items() if getattr(args, a, None) is not None}
    if block.get("base_url"):
        block["backend"] = "openai"
    elif block.get("spec"):
        block["backend"] = "local"
    return block


def build_config(model: type[BaseModel], values: dict[str, Any], args: argparse.Namespace) -> BaseModel:
    """Validate the merged values; an error names the config file only when the file itself is wrong."""
    from pmpo_cli.flags import flag_names

    if not args.config:
        return build(model, values, "arguments", flag_names())
    try:
        return build(model, values, args.config)
    except ConfigError:
        build(model, read_config_file(args.config), args.config)  # raises when the file alone is wrong
        return build(model, values, "arguments", flag_names())  # the file is fine: a flag sets a bad value


def columns(pairs: list[str]) -> dict[str, str]:
    """`--column FIELD=COLUMN` pairs as a mapping (only the fields given)."""
    try:
        mapped = ColumnMap.from_pairs(pairs)  # checks the syntax and the field names, naming the bad pair
    except PmpoError as exc:
        raise ConfigError(str(exc)) from None
    given = {pair.partition("=")[0].strip() for pair in pairs}
    every = {name: getattr(mapped, name) for name in ROLES} | dict(mapped.variables)
    return {name: column for name, column in every.items() if name in given}


def read_prompt(path: str) -> str:
    """The prompt in a file (surrounding whitespace dropped)."""
    text = read_text(Path(path), "the prompt file", f"--prompt-file {path}").strip()
    if not text:
        raise ConfigError(f"--prompt-file {path}: the file is empty")
    return text
