"""The CLI flags set config fields: each flag's choices, type and stated default are its field's
(pmpo_cli.flags.FIELD_FLAGS names the field), and the shared flags land in that field."""

import argparse
import re

import pytest

from flows.config import OptimizeConfig
from pmpo.settings import choices
from pmpo_cli.flags import FIELD_FLAGS
from pmpo_cli.main import _positive, build_parser
from pmpo_cli.options import config_values


def _actions() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s: a for s, a in ((s, a) for a in sub.choices["optimize"]._actions for s in a.option_strings)}


def _field(path: str):
    model, *parents, name = [OptimizeConfig, *path.split(".")]
    for parent in parents:
        model = model.model_fields[parent].annotation
    return model, name, model.model_fields[name]


@pytest.mark.parametrize("flag, path", sorted(FIELD_FLAGS.items()))
def test_each_flag_agrees_with_its_field(flag, path):
    action = _actions()[flag]
    model, name, field = _field(path)
    assert action.default is None  # an absent flag leaves the field to the config file and the model's default
    if action.choices is not None or choices(model, name):
        assert list(action.choices or []) == choices(model, name)
    if field.annotation in (int, int | None):
        assert action.type in (int, _positive)
    if field.annotation in (float, float | None):
        assert action.type is float
    stated = re.search(r"\(default (?:[a-z ]*?)?([\d.]+)\b", action.help or "")
    if stated:
        assert float(stated.group(1)) == field.default, (
            f"{flag} says default {stated.group(1)}, {path} is {field.default}"
        )


def test_every_flag_that_names_a_field_exists_and_every_config_path_is_real():
    actions = _actions()
    assert set(FIELD_FLAGS) <= set(actions)
    for path in FIELD_FLAGS.values():
        _field(path)


SHARED = {
    "--data": "builtin:sentiment",
    "--format": "jsonl",
    "--limit": "7",
    "--model": "m",
    "--dtype": "float32",
    "--device": "cpu",
    "--backend": "openai",
    "--base-url": "http://h/v1",
    "--served-model": "s",
    "--api-key-env": "KEY",
    "--tokenizer": "t",
    "--max-concurrency": "3",
    "--seed": "5",
    "--eval-examples": "9",
    "--mc-objective": "ce",
    "--beta": "0.5",
    "--rewriter-spec": "r",
}


def test_the_shared_flags_land_in_their_fields():
    argv = ["optimize"] + [x for flag, value in SHARED.items() for x in (flag, value)]
    config = OptimizeConfig.model_validate(config_values(build_parser().parse_args(argv)))
    for flag, value in SHARED.items():
        model, name, _ = _field(FIELD_FLAGS[flag])
        holder = config
        for part in FIELD_FLAGS[flag].split(".")[:-1]:
            holder = getattr(holder, part)
        assert str(getattr(holder, name)) == value, flag


def test_description_lands_in_data_description_and_only_optimize_takes_it():
    argv = ["optimize", "--description", "Say whether a review is positive."]
    config = OptimizeConfig.model_validate(config_values(build_parser().parse_args(argv)))
    assert config.data.description == "Say whether a review is positive."
    assert OptimizeConfig().data.description is None  # absent: the data's own (<stem>.meta.json) stays
    evaluate = build_parser().parse_args(["evaluate"])
    assert "description" not in config_values(evaluate).get("data", {})


def test_the_loop_flags_land_in_their_fields():
    from pmpo_cli.commands import optimize_values

    argv = ["optimize", "--no-masking", "--units", "splitter", "--gate-z", "0", "--patience", "0", "--racing"]
    argv += ["--no-tempered-gate", "--demos", "3"]
    config = OptimizeConfig.model_validate(optimize_values(build_parser().parse_args(argv)))
    assert (config.masking, config.units, config.selection.gate_z, config.patience) == (False, "splitter", 0.0, 0)
    assert not config.selection.tempered_gate
    assert config.racing.enabled and config.demonstrations.k == 3
    default = OptimizeConfig.model_validate(optimize_values(build_parser().parse_args(["optimize", "--masking"])))
    assert default.masking and default.selection.gate_z == 1.0 and default.patience == 2
    assert default.selection.tempered_gate
    assert default.demonstrations.k == 0
