"""The `pmpo` command: bad arguments get one line and a non-zero exit; a tiny run writes its JSON summary;
`runs`, `show` and `evaluate` read the record back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pmpo_cli.main import main
from support.pipeline import PROMPT, tiny_values


def _one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pmpo: error: ")
    return err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["optimize", "--bogus"], "unrecognized arguments: --bogus"),
        (["optimize", "--iterations", "many"], "invalid int value: 'many'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["optimize", "--data", "no/such/file.jsonl"], "data file 'no/such/file.jsonl' does not exist"),
        (["optimize", "--column", "target"], "--column 'target': expected FIELD=COLUMN"),
        (["optimize", "--column", "an-swer=target"], "not one of our fields (input, target"),
        (["optimize", "--prompt", "a", "--prompt-file", "b"], "not allowed with argument"),
        (["optimize", "--prompt-file", "no-such-prompt.txt"], "--prompt-file no-such-prompt.txt"),
        (["optimize", "--iterations", "-1"], "iterations: Input should be greater than or equal to 0"),
        (["optimize", "--config", "no-such.yaml"], "no-such.yaml: cannot read config file"),
        (["show"], "the following arguments are required: RUN"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(capsys, argv, says):
    assert says in _one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("bad.yaml", "iterations: [1, 2\n", "bad.yaml: not valid YAML"),
        ("bad.toml", "iterations = \n", "bad.toml: not valid TOML"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping of config fields"),
        ("typo.yaml", "iteration: 3\n", "typo.yaml: iteration: Extra inputs are not permitted"),
        ("type.toml", 'iterations = "three"\n', "type.toml: iterations: Input should be a valid integer"),
        ("nested.yaml", "rewrite: {k: 0}\n", "nested.yaml: rewrite.k: Input should be greater than or equal to 1"),
        ("race.yaml", "racing: {first_slice: 1}\n", "race.yaml: racing.first_slice: Input should be greater than"),
    ],
)
def test_bad_config_files_get_one_line(capsys, tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    assert says in _one_line_error(capsys, ["optimize", "--config", str(path)])


def test_missing_model_directory_is_one_line(capsys, pmpo_home):
    err = _one_line_error(capsys, ["optimize", "--model", "./no-such-model-dir"], code=1)
    assert "no-such-model-dir" in err


def test_console_script_reports_bad_arguments_in_one_line():
    exe = shutil.which("pmpo") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "pmpo_cli.main"]
    out = subprocess.run([*cmd, "optimize", "--bogus"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["pmpo: error: unrecognized arguments: --bogus (see `pmpo --help`)"]


@pytest.mark.usefixtures("prefect_harness")
def test_optimize_writes_summary_and_the_record_reads_back(capsys, tmp_path, pmpo_home, tiny_model_dir):
    config = tmp_path / "run.yaml"
    values = tiny_values(tiny_model_dir, iterations=1)
    values.pop("prompt")
    values["racing"] = {"first_slice": 2}  # `--racing` below turns it on: the 4 training examples race 2, 4
    import yaml

    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "summary.json"
    # Flags override the file: the prompt and the seed come from the command line.
    argv = ["optimize", "--config", str(config), "--prompt", PROMPT, "--seed", "3", "--racing", "--output", str(out)]
    rc = main(argv)
    shown = capsys.readouterr().out
    assert rc == 0

    summary = json.loads(out.read_text())
    required = {"run_id", "experiment", "initial_loss", "best_loss", "n_candidates", "best_prompt"}
    assert required <= set(summary)
    assert summary["experiment"] == "sentiment" and summary["initial_prompt"] == PROMPT
    assert summary["n_candidates"] == len(summary["candidates"]) > 1
    assert summary["best_loss"] <= summary["initial_loss"]
    full = max(c["n_examples"] for c in summary["candidates"])  # the training set (a seeded hash split sizes it)
    assert all(c["dropped"] == (c["n_examples"] < full) for c in summary["candidates"])
    assert not any(c["dropped"] and c["selected"] for c in summary["candidates"])
    assert "mlflow ui --backend-store-uri sqlite:///" in shown and summary["run_url_path"] in shown
    delta = summary["heldout"]["delta_loss"]  # final - initial on the held-out examples, with its interval
    assert delta["low"] <= delta["estimate"] <= delta["high"]
    assert delta["estimate"] == pytest.approx(summary["heldout"]["final_loss"] - summary["heldout"]["initial_loss"])
    assert (
        "change [95% CI]" in shown and f"{delta['estimate']:+.4f} [{delta['low']:+.4f}, {delta['high']:+.4f}]" in shown
    )
    cost = summary["cost"]  # what the run cost, per iteration and in total
    spans = [cost["initial"], *cost["iterations"], cost["heldout"]]
    assert len(cost["iterations"]) == 1 and cost["total"]["tokens_scored"] > 0
    assert cost["total"]["tokens_scored"] == sum(s["tokens_scored"] for s in spans)
    assert cost["total"]["steps"]["rewrite"]["tokens_generated"] == cost["iterations"][0]["tokens_generated"]
    assert "scored tok" in shown and f"{cost['total']['tokens_scored']:,}" in shown

    assert main(["runs"]) == 0
    assert summary["run_id"] in capsys.readouterr().out
    assert main(["show", summary["run_id"], "--width", "200"]) == 0
    listing = capsys.readouterr().out
    assert all(c["id"] in listing for c in summary["candidates"])

    registered = f"prompts:/{summary['prompt_name']}@latest"
    scored = tmp_path / "eval.json"
    common = [
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--limit",
        "40",
        "--seed",
        "3",
        "--eval-examples",
        "6",
    ]
    assert main(["evaluate", "--prompt", registered, *common, "--no-generate", "--output", str(scored)]) == 0
    evaluation = json.loads(scored.read_text())
    assert evaluation["prompt"] == summary["best_prompt"] and evaluation["prompt_source"] == registered
    assert evaluation["loss"] == pytest.approx(summary["heldout"]["final_loss"])  # the same held-out examples
    assert evaluation["accuracy"] is None
    assert evaluation["cost"]["tokens_generated"] == evaluation["cost"]["tokens_prefilled"] == 0  # scored only
    assert evaluation["cost"]["steps"]["evaluate"]["calls"] == 1


def test_show_unknown_run_is_one_line(capsys, pmpo_home):
    assert "no run 'abc123'" in _one_line_error(capsys, ["show", "abc123"], code=1)
