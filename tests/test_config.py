"""Configs: parsing and validation of values, config groups, presets as data, and the golden
list of every algorithm's hyperparameters and defaults.

The golden file pins the flat field list and defaults of every algorithm (agent and loop). When a
change to it is intended, regenerate it with ``python tests/test_config.py`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from diffmaxent.agents.groups import Temperature
from diffmaxent.agents.sac import SACConfig
from diffmaxent.api import DEVICE_ONLY_NOTE, hyperparameter_table, resolve_config
from diffmaxent.config import (
    AUTO,
    Preset,
    from_json_dict,
    parse_assignments,
    replace_validated,
    task_of,
    to_json_dict,
    with_defaults,
)
from diffmaxent.errors import UsageError
from diffmaxent.registry import ALGOS

GOLDEN = Path(__file__).parent / "golden" / "hyperparameters.json"


def hyperparameters() -> dict[str, dict[str, dict[str, object]]]:
    """``{algo: {"agent": {name: default}, "loop": {name: default}}}`` in field order."""

    def defaults(cls: type) -> dict[str, object]:
        return {f.name: to_json_dict(cls()).get(f.name) for f in dataclasses.fields(cls)}

    return {
        name: {"agent": defaults(spec.config_cls), "loop": defaults(spec.loop.config_cls)}
        for name, spec in ALGOS.items()
    }


def test_every_algorithm_keeps_its_golden_field_list_and_defaults():
    golden = json.loads(GOLDEN.read_text())
    current = hyperparameters()
    assert sorted(current) == sorted(golden), "algorithms added or removed: update the golden file"
    for algo in golden:
        for part in ("agent", "loop"):
            # Lists of pairs, so that the order of the fields is compared too.
            assert list(current[algo][part].items()) == [
                tuple(pair) for pair in golden[algo][part].items()
            ], f"{algo} {part} fields changed: run `python tests/test_config.py` if intended"


def test_one_name_has_one_meaning_across_algorithms():
    meaning: dict[str, set[str]] = {}
    for algo in ALGOS:
        for name, _type, _default, help_text in hyperparameter_table(algo):
            # where a setting applies (the device loop only) is not another meaning
            meaning.setdefault(name, set()).add(help_text.removesuffix(DEVICE_ONLY_NOTE))
    assert {name: helps for name, helps in meaning.items() if len(helps) > 1} == {}


def test_with_defaults_changes_defaults_only():
    variant = with_defaults(Temperature, temperature=0.1, init_temperature=0.5)
    assert [f.name for f in dataclasses.fields(variant)] == [
        f.name for f in dataclasses.fields(Temperature)
    ]
    assert variant().temperature == 0.1 and variant().init_temperature == 0.5
    assert variant().temperature_lr == Temperature().temperature_lr
    original = {f.name: f.metadata for f in dataclasses.fields(Temperature)}
    assert all(f.metadata == original[f.name] for f in dataclasses.fields(variant))
    assert variant(temperature="auto").learns_temperature
    with pytest.raises(TypeError, match="no field 'nope'"):
        with_defaults(Temperature, nope=1)


def test_presets_are_data_and_resolve_per_task():
    preset = Preset({"a": 1, "b": 2}, "note", per_task={"HalfCheetah": {"b": 3}})
    assert preset.values_for("HalfCheetah-v5") == {"a": 1, "b": 3}
    assert preset.values_for("HalfCheetah-v4") == {"a": 1, "b": 3}
    assert preset.values_for("Hopper-v5") == {"a": 1, "b": 2}
    assert task_of("dmc:cheetah-run") == "dmc:cheetah-run"
    assert task_of("MultiGoal-v0") == "MultiGoal"


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_preset_names_only_known_hyperparameters_and_has_a_note(algo):
    names = {row[0] for row in hyperparameter_table(algo)}
    for name, preset in ALGOS[algo].presets.items():
        assert preset.note.strip(), f"{algo} preset {name} has no note"
        assert preset.suite in (None, "gym", "dmc", "myo", "mjx")
        env = "mjx:CartpoleBalance" if preset.suite == "mjx" else "Pendulum-v1"
        for values in (preset.values, *preset.per_task.values()):
            assert set(values) <= names, f"{algo} preset {name}: {set(values) - names}"
            resolve_config(algo, env, preset=name, overrides=values)


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_device_loop_settings_resolve_on_mjx_envs_and_end_with_one_line_elsewhere(algo):
    """num_envs is the device loop's own setting for off-policy agents (their host loop steps one
    env); on-policy agents have it on both loops."""
    config = resolve_config(algo, "mjx:CartpoleBalance", overrides={"num_envs": 16})
    assert config.loop.num_envs == 16
    table = {row[0]: row for row in hyperparameter_table(algo)}
    if algo == "ppo":
        assert resolve_config(algo, "Pendulum-v1", overrides={"num_envs": 16}).loop.num_envs == 16
        assert "mjx: envs only" not in table["num_envs"][3]
        return
    assert table["num_envs"][3].endswith(DEVICE_ONLY_NOTE)
    assert "num_envs" not in {row[0] for row in hyperparameter_table(algo, "Pendulum-v1")}
    with pytest.raises(UsageError, match="'num_envs' is a setting of the device loop") as info:
        resolve_config(algo, "Pendulum-v1", overrides={"num_envs": 16})
    assert "\n" not in str(info.value)


def test_overrides_parse_every_field_type():
    config = replace_validated(
        SACConfig(),
        {"gamma": "0.98", "actor_hidden_dims": "64,32", "temperature": "0.2", "num_critics": "3"},
    )
    assert config.gamma == 0.98 and config.actor_hidden_dims == (64, 32)
    assert config.temperature == 0.2 and config.num_critics == 3
    assert replace_validated(SACConfig(), {"temperature": "auto"}).temperature == AUTO
    assert replace_validated(SACConfig(), {"gamma": 1}).gamma == 1.0


@pytest.mark.parametrize(
    "values,fragment",
    [
        ({"gama": "0.9"}, "unknown hyperparameter 'gama'"),
        ({"gamma": "abc"}, "not a valid float"),
        ({"gamma": "1.5"}, "out of range"),
        ({"num_critics": "1.5"}, "not a valid int"),
        ({"actor_hidden_dims": "64,0"}, "out of range"),
        ({"temperature": "-1"}, "out of range"),
        ({"temperature": "hot"}, "not a valid"),
        ({"actor_lr": "0"}, "out of range"),
    ],
)
def test_bad_overrides_raise_one_line_usage_errors(values, fragment):
    with pytest.raises(UsageError, match=fragment) as info:
        replace_validated(SACConfig(), values)
    assert "\n" not in str(info.value)


def test_assignment_parsing_and_json_round_trip():
    assert parse_assignments(["a=1", " b = x,y "]) == {"a": "1", "b": "x,y"}
    with pytest.raises(UsageError):
        parse_assignments(["novalue"])
    config = replace_validated(SACConfig(), {"critic_hidden_dims": "8,8", "temperature": "0.5"})
    assert from_json_dict(SACConfig, to_json_dict(config)) == config


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(hyperparameters(), indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
