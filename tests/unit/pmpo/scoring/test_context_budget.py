"""Context budgets: an over-long prompt is named as the prompt, an over-long example by its row in the file, and
the check runs before the flow creates an MLflow run."""

from __future__ import annotations

import json

import pytest

import pmpo
from pmpo.errors import ContextLengthError
from pmpo.models.loading import load_text_side
from pmpo.scoring.context_budget import check_fits


def _rows(path, long_row: int, n: int = 12, long_words: int = 800):
    with path.open("w") as f:
        for row in range(1, n + 1):
            text = "word " * long_words if row == long_row else f"short review {row}"
            f.write(json.dumps({"input": text, "target": "positive" if row % 2 else "negative"}) + "\n")


def test_long_example_is_named_by_its_row_in_the_file(tmp_path, tiny_model_dir):
    path = tmp_path / "reviews.jsonl"
    _rows(path, long_row=9)  # the tiny model's context is 512 tokens
    data = pmpo.load_dataset(path)
    split = pmpo.split_dataset(data, seed=0, train_fraction=0.5)
    text = load_text_side(str(tiny_model_dir))
    part = split.train if 9 in split.train.rows else split.test
    assert part.rows != tuple(range(1, len(part) + 1))  # the split's rows are the file's, not 1..n
    with pytest.raises(ContextLengthError, match=r"reviews\.jsonl, row 9 is \d+ tokens"):
        check_fits(text, "Classify.", part)


def test_long_prompt_is_named_as_the_prompt(tiny_model_dir):
    data = pmpo.load_dataset("builtin:sentiment", limit=4)
    with pytest.raises(ContextLengthError, match="the prompt is .* tokens"):
        check_fits(load_text_side(str(tiny_model_dir)), "Be brief. " * 300, data)
    check_fits(load_text_side(str(tiny_model_dir)), "Be brief.", data)  # a short one fits


def test_flow_refuses_before_creating_a_run(tmp_path, tiny_model_dir, pmpo_home, prefect_harness):
    from flows.optimize import optimize_prompt
    from support.pipeline import tiny_config
    from tasks.mlflow import queries

    path = tmp_path / "reviews.jsonl"
    _rows(path, long_row=3, n=20)
    config = tiny_config(tiny_model_dir, data={"source": str(path)})
    with pytest.raises(ContextLengthError, match="row 3"):
        optimize_prompt(config)
    assert queries.list_runs() == []  # no empty FAILED run left behind
