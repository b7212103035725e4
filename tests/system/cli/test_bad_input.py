"""The bad-input matrix: every user mistake gets one line naming the file, line or field, and a non-zero exit.

Data files are checked through the loader (what the flow calls first, before any MLflow run exists); the rest
through the command line, in this process.
"""

from __future__ import annotations

import pytest

import pmpo
from pmpo.errors import DataError
from pmpo_cli.main import main
from tasks.environment import redact

LATIN1 = "café".encode("latin-1")  # 0xE9 alone is not UTF-8


def _one_line_error(capsys, argv: list[str], code: int) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pmpo: error: ")
    return err


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        (
            "rows.jsonl",
            b'{"input": "a", "target": "b"}\n{"input": "' + LATIN1 + b'", "target": "x"}\n',
            "rows.jsonl, line 2: not UTF-8",
        ),
        ("rows.json", b'[\n{"input": "' + LATIN1 + b'", "target": "x"}]', "rows.json, line 2: not UTF-8"),
        ("rows.csv", b"input,target\na,b\nc,d\n" + LATIN1 + b",x\n", "rows.csv, line 4: not UTF-8"),
        ("cut.jsonl", b'{"input": "a", "target": "b"}\n{"input": "\xc3', "cut.jsonl, line 2: not UTF-8"),
        ("rows", b'{"input": "a", "target": "b"}\n', "cannot tell the data format from the file name"),
    ],
)
def test_bad_data_files_name_file_and_line(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=says):
        pmpo.load_dataset(path)


def test_a_file_without_suffix_loads_with_an_explicit_format(tmp_path):
    path = tmp_path / "rows"
    path.write_text('{"input": "a", "target": "b"}\n')
    assert len(pmpo.load_dataset(path, format="jsonl")) == 1


def test_utf8_split_across_read_chunks_is_fine(tmp_path):
    path = tmp_path / "wide.jsonl"
    row = '{"input": "%s", "target": "é"}\n' % ("é" * 1000)
    path.write_text(row * 80, encoding="utf-8")  # > 64 KiB: characters straddle the reader's chunks
    assert len(pmpo.load_dataset(path)) == 80


@pytest.mark.parametrize(
    ("files", "argv", "says", "code"),
    [
        (
            {"run.yaml": b"iterations: 1\nprompt: " + LATIN1 + b"\n"},
            ["optimize", "--config", "run.yaml"],
            "run.yaml, line 2: config file is not UTF-8",
            2,
        ),
        (
            {"p.txt": b"Classify " + LATIN1},
            ["optimize", "--prompt-file", "p.txt"],
            "--prompt-file p.txt, line 1: the prompt file is not UTF-8",
            2,
        ),
        (
            {"run.yaml": b"iterations: true\n"},
            ["optimize", "--config", "run.yaml"],
            "run.yaml: iterations: expected a number, not the boolean true",
            2,
        ),
        (
            {"run.yaml": b"eval: {max_examples: false}\n"},
            ["optimize", "--config", "run.yaml"],
            "run.yaml: eval.max_examples: expected a number",
            2,
        ),
        (
            {"run.yaml": b"iterations: 1\n"},
            ["optimize", "--config", "run.yaml", "--iterations", "-1"],
            "--iterations: Input should be greater than or equal to 0",  # the flag, not the field
            2,
        ),
        # Typos and paths, caught before any run exists.
        ({}, ["optimize", "--iteration", "3"], "unrecognized arguments: --iteration 3", 2),  # no prefix matching
        ({}, ["nightly", "--conf", "p.yaml"], "the following arguments are required: --config", 2),
        ({}, ["optimize", "--output", "no-dir/out.json"], "--output no-dir/out.json: no such directory", 2),
        ({}, ["evaluate", "--output", "no-dir/e.json"], "--output no-dir/e.json: no such directory", 2),
        ({}, ["optimize", "--train-size", "0"], "error: --train-size: Input should be greater than or equal to 1", 2),
        ({}, ["optimize", "--limit", "0"], "error: --limit: Input should be greater than or equal to 1", 2),
        (
            {"rows.csv": b"text,label\ngreat,positive\n"},
            ["optimize", "--data", "rows.csv", "--prompt", "Review: {{review}}", "--column", "targte=label"],
            "data.columns: column mapping targte=label: 'targte' is neither one of our fields (input, target, "
            "chosen, rejected, options, aliases) nor the prompt's variables (review); did you mean target=label?",
            2,
        ),
        (
            {"prompts.yaml": b"prompts:\n- name: sent\n  optimize: {itrations: 3}\n"},
            ["nightly", "--config", "prompts.yaml"],
            "prompts.yaml: prompts[0] (sent): optimize.itrations: Extra inputs are not permitted "
            "(did you mean 'iterations'?)",
            2,
        ),
        (
            {"rows": b'{"input": "a", "target": "b"}\n'},
            ["optimize", "--data", "rows"],
            "rows: cannot tell the data format",
            2,
        ),
        ({}, ["runs", "--limit", "0"], "argument --limit: must be at least 1, not 0", 2),
    ],
)
def test_bad_command_line_input_gets_one_line(capsys, tmp_path, monkeypatch, pmpo_home, files, argv, says, code):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert says in _one_line_error(capsys, argv, code)


def test_enabled_flags_still_take_booleans(tmp_path):
    from flows.config import OptimizeConfig, build

    config = build(OptimizeConfig, {"racing": {"enabled": True}, "eval": {"generate": False}})
    assert config.racing.enabled and not config.eval.generate


def test_pmpo_home_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("PMPO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert "is a file, not a directory" in _one_line_error(capsys, ["runs"], 1)


def test_unreachable_tracking_server_is_one_line_without_the_password(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret-token@127.0.0.1:9/")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once: no need to wait out retries
    err = _one_line_error(capsys, ["runs"], 1)
    assert "MLflow tracking store failed" in err
    assert "s3cret-token" not in err and "http://***@127.0.0.1:9" in err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:token@host:5000/path", "http://***@host:5000/path"),
        ("failed at postgresql://u:p@db/x, then https://t@h", "failed at postgresql://***@db/x, then https://***@h"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://host/a@b", "http://host/a@b"),
    ],
)
def test_redact_hides_credentials_only(text, shown):
    assert redact(text) == shown
