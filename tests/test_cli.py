"""The command line: every bad input is one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffmaxent.cli import main

SMALL = [
    "--algo",
    "sac",
    "--env",
    "Pendulum-v1",
    "--set",
    "actor_hidden_dims=16,16",
    "--set",
    "batch_size=16",
    "--set",
    "learning_starts=50",
    "--set",
    "eval_every=100",
    "--set",
    "eval_episodes=1",
]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


BAD_TRAIN_ARGS = [
    (["--algo", "nope"], "unknown algo 'nope'; accepted: sac"),
    (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
    (["--env", "CartPole-v1"], "Discrete action space"),
    (["--preset", "nope"], "unknown preset 'nope'; accepted:"),
    (["--set", "gama=0.9"], "unknown hyperparameter 'gama'"),
    (["--set", "gamma=abc"], "not a valid float"),
    (["--set", "gamma=1.5"], "out of range"),
    (["--set", "batch_size=0"], "out of range"),
    (["--set", "batch_size=2.5"], "not a valid int"),
    (["--set", "temperature=warm"], "not a valid"),
    (["--set", "gamma"], "--set expects name=value"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "-5"], "--steps must be a positive integer"),
    (["--steps", "ten"], "--steps expects an integer"),
    (["--seed", "-1"], "seed must be an integer >= 0"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args,fragment", BAD_TRAIN_ARGS)
def test_bad_train_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--steps", "10", *args])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmaxent: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_existing_run_is_refused_without_force_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "100", "--out", str(out), "--quiet", *SMALL]) == 0
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    capsys.readouterr()
    code = main(["train", "--steps", "100", "--out", str(out), "--quiet", *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds a run" in err[0] and "--force" in err[0]
    assert _snapshot(out) == before

    # A bad value is rejected before --force removes anything.
    assert main(["train", "--steps", "0", "--out", str(out), "--force"]) == 2
    assert _snapshot(out) == before

    assert (
        main(
            [
                "train",
                "--steps",
                "100",
                "--out",
                str(out),
                "--quiet",
                "--force",
                "--seed",
                "1",
                *SMALL,
            ]
        )
        == 0
    )
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only the run's own files
    assert '"seed": 1' in (out / "config.json").read_text()


def test_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep")
    assert main(["train", "--steps", "10", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep"


def test_eval_reloads_and_prints_mean_and_std(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "100", "--out", str(out), "--quiet", *SMALL]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert "checkpoint at step 100" in line and "2 deterministic episodes" in line and "±" in line


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["eval", "{missing}"], "not a run directory"),
        (["eval", "{tmp}", "--episodes", "0"], "--episodes must be a positive integer"),
        (["presets", "nope"], "unknown algo 'nope'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_eval_and_listing_input(tmp_path, capsys, args, fragment):
    args = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_algos_and_presets_list_every_hyperparameter(capsys):
    assert main(["algos"]) == 0
    assert "sac" in capsys.readouterr().out
    assert main(["presets", "sac"]) == 0
    out = capsys.readouterr().out
    for name in (
        "gamma",
        "tau",
        "batch_size",
        "actor_lr",
        "critic_lr",
        "hidden_dims",
        "learning_starts",
        "updates_per_step",
        "buffer_size",
        "temperature",
        "eval_every",
        "eval_episodes",
        "paper",
        "cpu",
    ):
        assert name in out


def test_installed_console_script_reports_errors_in_one_line(tmp_path):
    script = Path(sys.executable).with_name("diffmaxent")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "diffmaxent.cli"]
    result = subprocess.run(
        [*command, "train", "--algo", "nope", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("diffmaxent: error: unknown algo 'nope'; accepted: sac")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "algo,env",
    [("maxentdp", "HalfCheetah-v5"), ("dime", "MultiGoal-v0"), ("sac", "mjx:CartpoleBalance")],
)
def test_presets_prints_every_value_each_preset_sets_on_an_env(capsys, algo, env):
    from diffmaxent.api import resolve_config
    from diffmaxent.registry import ALGOS

    assert main(["presets", algo, "--env", env]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("name "))
    header = lines[start].split()
    names = list(ALGOS[algo].presets)
    assert header[3 : 3 + len(names)] == names
    # Columns are aligned: cut every row at the header's column starts.
    starts = [re.search(rf"(?<= ){re.escape(t)}(?= |$)", lines[start]).start() for t in header[1:]]
    bounds = list(zip([0, *starts], [*starts, None], strict=True))
    table = {}
    for line in lines[start + 1 :]:
        cells = [line[a:b].strip() for a, b in bounds]
        table[cells[0]] = cells
    for column, preset in enumerate(names, start=3):
        if ALGOS[algo].presets[preset].suite == "mjx" and not env.startswith("mjx:"):
            continue  # its device-loop settings have no row on a host env
        config = resolve_config(algo, env, preset=preset)
        values = {**dataclasses.asdict(config.agent), **dataclasses.asdict(config.loop)}
        for name, value in values.items():
            shown = table[name][column].rstrip("*")
            expected = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert shown == expected, (preset, name)


def test_every_option_of_every_subcommand_has_a_help_line_with_its_default():
    import argparse

    from diffmaxent.cli import _build_parser

    parser = _build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands_named = {"train", "eval", "bench", "algos", "presets", "plot", "compare", "sweep",
                      "reproduce"}  # fmt: skip
    assert set(commands.choices) == commands_named
    for name, subparser in commands.choices.items():
        for action in subparser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.option_strings:
                assert "default" in action.help, f"{name} {action.option_strings[0]}"
    assert "default maxentdp" in " ".join(commands.choices["train"].format_help().split())


def test_multigoal_progress_and_final_lines_say_how_many_goals_were_reached(tmp_path, capsys):
    settings = ["actor_hidden_dims=8", "critic_hidden_dims=8", "batch_size=8"]
    settings += ["learning_starts=10", "eval_every=30", "eval_episodes=2"]
    sets = [item for setting in settings for item in ("--set", setting)]
    out = tmp_path / "mg"
    arguments = ["train", "--algo", "sac", "--env", "MultiGoal-v0", "--steps", "60"]
    assert main([*arguments, "--out", str(out), *sets]) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert len(progress) == 2
    assert all(re.search(r"goals reached [0-4] of 4", line) for line in progress)
    assert re.search(
        r"final evaluation return .*; goals reached [0-4] of 4; run directory", captured.out
    )
