"""Demonstrations in the optimisation flow, on the tiny model: the setting travels from the flow's config to its
steps, the flow proposes the library loop's demonstration candidates, and the summary says where they came from."""

from __future__ import annotations

import pytest

from pmpo.data import load_dataset, split_dataset
from pmpo.loop.optimizer import PMPO
from pmpo.text.demonstrations import shown
from support.pipeline import PROMPT, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_flow_proposes_the_library_loops_demonstrations(tmp_path, monkeypatch, tiny_model_dir, tiny_lm):
    from flows.optimize import optimize_prompt

    monkeypatch.setenv("PMPO_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config(tiny_model_dir, iterations=1, masking=False, demonstrations={"k": 2, "sets": 2})
    summary = optimize_prompt(config)
    split = split_dataset(load_dataset("builtin:sentiment", limit=40), seed=config.seed)
    direct = PMPO(tiny_lm, config).optimize(PROMPT, split.train)

    demos = [c for c in summary.candidates if c.origin == "demonstrations"]
    assert [c.prompt for c in demos] == [c.prompt for c in direct.candidates if c.origin == "demonstrations"]
    assert demos  # 2 sets asked for; a 4-example training split leaves room for fewer distinct ones
    for c in demos:  # scored without the examples they show
        assert c.n_examples == len(split.train) - len(shown(c.prompt, split.train.examples)) == len(split.train) - 2
