"""`pmpo optimize --dry-run` prints the cost plan and makes no run: nothing in MLflow, no task results."""

from __future__ import annotations

import pytest
import yaml

from pmpo_cli.main import main
from support.pipeline import tiny_values


@pytest.mark.parametrize("extra", [[], ["--max-tokens", "5000", "--max-seconds", "60"]])
def test_dry_run_prints_the_plan_and_records_nothing(capsys, tmp_path, pmpo_home, tiny_model_dir, extra):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_values(tiny_model_dir)))  # short rewrites: calibration sends two
    rc = main(["optimize", "--dry-run", "--config", str(config), "--iterations", "3", *extra])
    shown = capsys.readouterr().out
    assert rc == 0
    assert "cost plan" in shown and "initial prompt" in shown and "candidates" in shown and "held-out" in shown
    assert "3 iterations x at most 4 candidates" in shown  # k=2 x n=2
    assert "calibration:" in shown and "tokens/s scored" in shown
    flat = " ".join(shown.split())  # the console wraps its lines
    assert "of its 4 replies were kept" in flat  # two requests (k=2) of n=2
    assert "candidates (likely" in flat and "tokens (likely" in flat
    assert not (pmpo_home / "results").exists()  # no task ran, so nothing was cached

    from tasks.mlflow import queries

    assert queries.list_runs() == []
