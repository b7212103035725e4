"""Loaders (every format, column mapping, kinds, clear errors), the paper's split, and the built-in demo tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pmpo.data import (
    ColumnMap,
    Dataset,
    MultipleChoice,
    Preference,
    Supervised,
    demo_task,
    load_dataset,
    split_dataset,
)
from pmpo.data.demo import BUILTIN_TASKS
from pmpo.errors import DataError, PmpoError

FIXTURES = Path(__file__).parent / "fixtures" / "data"

ROWS = [
    {"input": "2 + 2?", "target": "4"},
    {"input": "3 + 3?", "target": "6"},
    {"input": "Capital of France?", "target": "Paris", "aliases": ["paris"]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- formats ---------------------------------------------------------------------------------------


def test_jsonl_loads_supervised_with_aliases(tmp_path):
    ds = load_dataset(write_jsonl(tmp_path / "arith.jsonl", ROWS))
    assert ds.name == "arith"
    assert ds.examples == (
        Supervised("2 + 2?", "4"),
        Supervised("3 + 3?", "6"),
        Supervised("Capital of France?", "Paris", aliases=("paris",)),
    )


def test_jsonl_with_meta_sets_prompt_and_description():
    ds = load_dataset(FIXTURES / "tiny_counting.jsonl")
    assert ds.name == "tiny_counting"
    assert ds.default_prompt == "Count the items."
    assert ds.description == "Count the objects in a list."
    assert ds.examples[0] == Supervised(
        "I have a cat and two dogs. How many animals do I have?", "three", aliases=("3",)
    )


def test_json_list_and_examples_object_load_the_same(tmp_path):
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps(ROWS))
    as_object = tmp_path / "b.json"
    as_object.write_text(json.dumps({"examples": ROWS, "task_prefix": "Answer briefly.\n\n"}))
    a, b = load_dataset(as_list), load_dataset(as_object)
    assert a.examples == b.examples and len(a) == 3
    assert (a.default_prompt, b.default_prompt) == ("", "Answer briefly.")


def test_csv_keeps_every_cell_as_text(tmp_path):
    path = write_csv(tmp_path / "codes.csv", ["input", "target"], [["Agent?", "007"], ["Price?", "1.50"]])
    ds = load_dataset(path)
    # Type inference would have made these 7 and 1.5.
    assert [e.target for e in ds.examples] == ["007", "1.50"]


def test_csv_list_cells_as_json_make_multiple_choice(tmp_path):
    path = write_csv(tmp_path / "mc.csv", ["input", "options", "target"], [["Sky?", '["blue", "green"]', "blue"]])
    assert load_dataset(path).examples == (MultipleChoice("Sky?", ("blue", "green"), "blue"),)


def test_tsv(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("input\ttarget\nHello, world\thi\n")
    assert load_dataset(path).examples == (Supervised("Hello, world", "hi"),)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pref.parquet"
    table = pa.Table.from_pylist(
        [
            {"prompt": "Greet.", "good": "Hello!", "bad": ["Go away.", "No."]},
            {"prompt": "Thank.", "good": "Thank you!", "bad": ["Whatever."]},
        ]
    )
    pq.write_table(table, path)
    ds = load_dataset(path, columns=ColumnMap(input="prompt", chosen="good", rejected="bad"))
    assert ds.examples == (
        Preference("Greet.", "Hello!", ("Go away.", "No.")),
        Preference("Thank.", "Thank you!", ("Whatever.",)),
    )


def test_bigbench_multiple_choice_from_target_scores():
    ds = load_dataset(FIXTURES / "tiny_mc" / "task.json")
    assert ds.name == "tiny_mc"
    assert ds.default_prompt == "Answer true or false."
    assert ds.description == "Decide whether a statement about colours is true."
    assert ds.examples[1] == MultipleChoice("Snow is black.", ("true", "false"), "false")
    assert ds.examples[2].options == ("yes, true", "no", "maybe")


def test_bigbench_exact_match_list_target_becomes_aliases(tmp_path):
    folder = tmp_path / "counting"
    folder.mkdir()
    doc = {
        "task_prefix": "Count.",
        "examples": [{"input": "a, b, c", "target": ["three", "3"]}, {"input": "a", "target": "one"}],
    }
    (folder / "task.json").write_text(json.dumps(doc))
    ds = load_dataset(folder / "task.json")
    assert ds.name == "counting"  # BIG-bench names a task by its folder
    assert ds.examples == (Supervised("a, b, c", "three", aliases=("3",)), Supervised("a", "one"))


def test_jsonl_target_string_in_one_row_and_list_in_another(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"input": "x", "target": "a"}, {"input": "y", "target": ["b", "B"]}])
    assert load_dataset(path).examples == (Supervised("x", "a"), Supervised("y", "b", aliases=("B",)))


def test_format_override_reads_an_odd_suffix(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", ROWS)
    assert len(load_dataset(path, format="jsonl")) == 3


def test_limit_takes_the_first_rows(tmp_path):
    ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS), limit=2)
    assert [e.input for e in ds.examples] == ["2 + 2?", "3 + 3?"]


# --- the hub code path, on local files (HF_HUB_OFFLINE=1) ----------------------------------------------


@pytest.fixture
def hub_dir(tmp_path) -> Path:
    """A dataset folder laid out like a hub repository: two configs, declared in README.md."""
    root = tmp_path / "my-hub-dataset"
    for config, word in (("easy", "a"), ("hard", "b")):
        (root / config).mkdir(parents=True)
        write_jsonl(root / config / "train.jsonl", [{"question": f"{word}{i}", "answer": str(i)} for i in range(4)])
        write_jsonl(root / config / "test.jsonl", [{"question": f"{word}-test", "answer": "0"}])
    configs = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.jsonl\n"
        f"  - split: test\n    path: {c}/test.jsonl\n"
        for c in ("easy", "hard")
    )
    (root / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return root


def test_hub_path_with_config_and_split(hub_dir):
    columns = ColumnMap(input="question", target="answer")
    ds = load_dataset(str(hub_dir), hub_config="hard", split="train", columns=columns, limit=3)
    assert ds.name == "my-hub-dataset/hard"
    assert ds.examples == tuple(Supervised(f"b{i}", str(i)) for i in range(3))


def test_hub_path_needs_a_split_when_there_are_several(hub_dir):
    with pytest.raises(DataError, match=r"splits train, test.*hub_split"):  # the config field; no --split flag
        load_dataset(hub_dir, hub_config="easy", columns=ColumnMap(input="question", target="answer"))


def test_hub_path_unknown_config_is_a_data_error(hub_dir):
    with pytest.raises(DataError, match="nosuch"):
        load_dataset(hub_dir, hub_config="nosuch", split="train")


def test_unknown_hub_name_offline_is_a_data_error():
    with pytest.raises(DataError, match="someone/no-such-dataset"):
        load_dataset("someone/no-such-dataset", split="train")


def test_a_name_that_is_no_file_fails_fast_without_a_network(monkeypatch, caplog):
    import time

    from huggingface_hub import constants

    from pmpo.data import loaders

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a user without the variable set
    monkeypatch.setattr(loaders.socket, "create_connection", _no_network)
    assert loaders.hub_offline() == "no connection to huggingface.co"
    start = time.monotonic()
    with pytest.raises(DataError, match=r"^'sentimnt' is neither a local file nor reachable on the hub \(no conn"):
        load_dataset("sentimnt")
    assert time.monotonic() - start < 10 and not caplog.records  # no retries, no warnings
    assert constants.HF_HUB_OFFLINE is False  # offline mode was for that one load only


def test_the_hub_path_still_runs_when_the_hub_is_reachable(monkeypatch, hub_dir):
    from pmpo.data import loaders

    calls = []
    monkeypatch.setattr(loaders, "hub_offline", lambda: None)
    monkeypatch.setattr(loaders, "_hf_load", lambda *a, **k: calls.append(a) or _raise(OSError("404 not found")))
    with pytest.raises(DataError, match="cannot load dataset 'someone/data'.*404 not found"):
        load_dataset("someone/data")
    assert calls == [("someone/data", None)]  # asked the hub (datasets), as a user with internet


def _no_network(*args, **kwargs):
    raise OSError("Name or service not known")


def _raise(exc):
    raise exc


# --- kinds and columns -----------------------------------------------------------------------------


def test_kind_inferred_from_columns(tmp_path):
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"input": "q", "options": ["a", "b"], "target": "b"}])
    pref = write_jsonl(tmp_path / "p.jsonl", [{"input": "q", "chosen": "good", "rejected": "bad"}])
    assert load_dataset(mc).examples == (MultipleChoice("q", ("a", "b"), "b"),)
    assert load_dataset(pref).examples == (Preference("q", "good", ("bad",)),)


def test_explicit_kind_overrides_inference(tmp_path):
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"input": "q", "options": ["a", "b"], "target": "b"}])
    assert load_dataset(mc, kind="supervised").examples == (Supervised("q", "b"),)


def test_column_map_from_cli_pairs():
    assert ColumnMap.from_pairs(["target = answer", "input=question"]) == ColumnMap(input="question", target="answer")
    with pytest.raises(DataError, match="FIELD=COLUMN"):
        ColumnMap.from_pairs(["answer"])
    with pytest.raises(DataError, match="'la-bel=x'"):
        ColumnMap.from_pairs(["la-bel=x"])
    # A name that is not one of our fields maps a template variable to a column.
    assert ColumnMap.from_pairs(["review=text"]).variables == (("review", "text"),)


# --- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_stable_across_formats_and_sensitive_to_content(tmp_path):
    a = load_dataset(write_jsonl(tmp_path / "a.jsonl", ROWS))
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    b = load_dataset(tmp_path / "b.json")
    edited = [*ROWS[:2], {"input": "Capital of France?", "target": "Lyon"}]
    changed = load_dataset(write_jsonl(tmp_path / "c.jsonl", edited))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert changed.fingerprint != a.fingerprint


# --- errors users will see -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: no such file"):
        load_dataset(tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize(
    "name,content", [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "input,target\n")]
)
def test_empty_dataset_names_the_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"{name} holds no examples"):
        load_dataset(tmp_path / name)


def test_missing_target_column_names_file_column_and_how_to_map(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ["input", "answer"], [["2 + 2?", "4"]])
    with pytest.raises(DataError) as caught:
        load_dataset(path)
    message = str(caught.value)
    assert "qa.csv" in message and "'target'" in message
    assert "Columns found: input, answer" in message
    assert "--column target=answer" in message
    # ... and the suggested mapping works.
    assert load_dataset(path, columns=ColumnMap.from_pairs(["target=answer"])).examples == (Supervised("2 + 2?", "4"),)


def test_a_misspelt_column_mapping_names_the_field_it_meant(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ["text", "label"], [["great", "positive"]])
    typo = ColumnMap.from_pairs(["input=text", "targte=label"])  # a name we do not know reads as a variable...
    # ... so with the prompt's variables unknown, it fails where the field it meant is missing, naming it.
    with pytest.raises(
        DataError, match=r"qa\.csv: column mapping targte=label: 'targte' is neither .*did you mean target=label\?"
    ):
        load_dataset(path, columns=typo)
    # With the prompt's variables known, any name that is neither a field nor one of them is refused.
    with pytest.raises(DataError, match=r"nor the prompt's variables \(review\); did you mean review=text\?"):
        load_dataset(path, columns=ColumnMap.from_pairs(["reveiw=text", "target=label"]), variables=("review",))
    assert load_dataset(path, columns=ColumnMap.from_pairs(["input=text", "target=label"])).examples == (
        Supervised("great", "positive"),
    )


def test_the_missing_column_hint_never_suggests_a_mapped_column(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ["text", "label"], [["great", "positive"]])
    with pytest.raises(DataError, match=r"e\.g\. --column target=text"):  # label is mapped to {{note}}
        load_dataset(path, columns=ColumnMap.from_pairs(["note=label"]), variables=("note",))


def test_missing_rejected_column_for_preference(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "q", "chosen": "good"}])
    with pytest.raises(DataError, match=r"p\.jsonl: no column 'rejected'"):
        load_dataset(path, kind="preference")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n\n{"input": "c" "target": "d"}\n{"input": "e", "target": "f"}\n')
    with pytest.raises(DataError, match=r"broken\.jsonl, line 3: not valid JSON"):
        load_dataset(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n["c", "d"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl, line 2"):
        load_dataset(path)


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"input": "a", "target": "b"},\n{"input": "c", target: "d"}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json, line 3"):
        load_dataset(path)


def test_target_not_among_options_names_the_row(tmp_path):
    rows = [
        {"input": "q1", "options": ["a", "b"], "target": "a"},
        {"input": "q2", "options": ["a", "b"], "target": "c"},
    ]
    with pytest.raises(DataError, match=r"mc\.jsonl, row 2: the target 'c' is not one of the options"):
        load_dataset(write_jsonl(tmp_path / "mc.jsonl", rows))


def test_empty_target_cell_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "gaps.csv", ["q", "a"], [["x", "1"], ["y", ""]])
    with pytest.raises(DataError, match=r"gaps\.csv, row 2: the target \(column 'a'\) is empty"):
        load_dataset(path, columns=ColumnMap(input="q", target="a"))


def test_single_option_in_csv_hints_at_json_lists(tmp_path):
    path = write_csv(tmp_path / "one.csv", ["input", "options", "target"], [["q", "a|b", "a"]])
    with pytest.raises(DataError, match=r"row 1: needs at least two options.*JSON list"):
        load_dataset(path)


def test_unknown_builtin_and_format(tmp_path):
    with pytest.raises(DataError, match="sentiment"):
        load_dataset("builtin:nosuch")
    with pytest.raises(DataError, match="unknown data format 'xml'"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS), format="xml")


def test_data_errors_are_pmpo_errors():
    assert issubclass(DataError, PmpoError)


# --- split -----------------------------------------------------------------------------------------


def numbered(n: int) -> Dataset:
    return Dataset(name="n", examples=tuple(Supervised(f"q{i}", str(i)) for i in range(n)))


@pytest.mark.parametrize("n,nominal", [(300, 50), (100, 20), (251, 50), (1000, 50)])
def test_split_follows_the_paper_rule_near_enough(n, nominal):
    # An example's side comes from its content's hash: sizes follow the fraction within the draw's noise (the
    # binomial's sd is sqrt(n * 0.2 * 0.8): 4 for 100 examples), and the training part never exceeds 20% or 50.
    split = split_dataset(numbered(n), seed=0)
    sd = (n * 0.2 * 0.8) ** 0.5
    assert nominal - 3 * sd <= len(split.train) <= nominal
    assert abs(len(split.test) - 0.8 * n) <= 3 * sd
    assert {e.input for e in split.train.examples}.isdisjoint(e.input for e in split.test.examples)


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_a_tiny_split_has_one_example_on_each_side(n):
    for seed in range(20):
        split = split_dataset(numbered(n), seed=seed)
        assert len(split.train) >= 1 and len(split.test) >= 1


def test_split_is_deterministic_and_seeded():
    data = numbered(100)
    a, b, c = (split_dataset(data, seed=s) for s in (1, 1, 2))
    assert a == b and a.train.fingerprint == b.train.fingerprint
    assert a.train.examples != c.train.examples


def test_split_fraction_and_cap_are_overridable():
    split = split_dataset(numbered(300), seed=0, train_fraction=0.5, train_cap=None)
    assert 150 - 26 <= len(split.train) <= 150 and abs(len(split.test) - 150) <= 26  # 3 sd of the draw
    assert len(split_dataset(numbered(300), seed=0, train_cap=10).train) == 10
    assert len(split_dataset(numbered(5), seed=0, train_fraction=1.0).test) == 1  # always one left to test


def test_a_growing_file_never_moves_an_example_from_training_to_held_out():
    # Rows appended and inserted, the file shuffled: every split of every version keeps each old example on its
    # side. A training example may leave training (the cap of 50 fills up with newcomers), never for held-out.
    import random

    rows = [Supervised(f"question {i}", str(i % 3)) for i in range(2000)]
    rng = random.Random(0)
    trained: set[str] = set()
    held: set[str] = set()
    for n in (20, 60, 150, 400, 1000, 2000):
        version = rows[:n]
        rng.shuffle(version)  # positions change too
        split = split_dataset(Dataset(name="grows", examples=tuple(version)), seed=7)
        train = {e.input for e in split.train.examples}
        test = {e.input for e in split.test.examples}
        assert not (trained & test), f"{len(trained & test)} training examples held out at n={n}"
        assert not (held & train), f"{len(held & train)} held-out examples trained on at n={n}"
        assert held <= test  # held out once, held out for good
        sd = (n * 0.2 * 0.8) ** 0.5
        assert abs(len(test) - 0.8 * n) <= 3 * sd + 1
        assert len(train) <= min(50, round(0.2 * n))
        trained |= train
        held |= test


def test_identical_examples_share_a_side():
    data = Dataset(name="dup", examples=tuple(Supervised(f"q{i % 40}", "a") for i in range(200)))
    split = split_dataset(data, seed=0, train_cap=None, train_fraction=0.5)
    assert {e.input for e in split.train.examples}.isdisjoint(e.input for e in split.test.examples)


def test_split_of_one_example_is_refused():
    with pytest.raises(DataError, match="at least 2 are needed"):
        split_dataset(numbered(1), seed=0)


@pytest.mark.parametrize("kwargs", [{"train_fraction": 0.0}, {"train_fraction": 1.5}, {"train_cap": 0}])
def test_split_rejects_bad_settings(kwargs):
    with pytest.raises(DataError):
        split_dataset(numbered(10), seed=0, **kwargs)


# --- built-in tasks --------------------------------------------------------------------------------


def test_demo_task_is_deterministic_by_seed_and_varied():
    a, b, c = demo_task(200, seed=0), demo_task(200, seed=0), demo_task(200, seed=1)
    assert a.examples == b.examples and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert len({e.input for e in a.examples}) == 200
    assert sorted({e.target for e in a.examples}) == ["negative", "positive"]
    assert sum(e.target == "positive" for e in a.examples) == 100
    assert a.default_prompt and a.description
    # A prefix of a larger draw is the smaller draw: `limit` and `n` agree.
    assert demo_task(30).examples == a.examples[:30]


def test_builtin_tasks_load_by_name():
    assert load_dataset("builtin:sentiment").examples == demo_task().examples
    assert len(load_dataset("builtin:sentiment", limit=12)) == 12
    arithmetic = load_dataset("builtin:arithmetic", limit=20)
    for example in arithmetic.examples:
        a, op, b = example.input.removeprefix("What is ").removesuffix("?").split()
        assert int(example.target) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert set(BUILTIN_TASKS) >= {"sentiment", "arithmetic"}
