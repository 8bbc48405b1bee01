"""Several seeds trained together in one process (``train --seeds``, ``train(seeds=[...])``).

Each seed must learn as that seed alone does: its parameters after the first gradient steps
match a single-seed run's to float tolerance (the seed axis batches the kernels, so the match is
not bitwise), and the seeds differ from each other. The group directory holds one ordinary run
directory per seed, and the group resumes as a whole after a SIGKILL, from the newest step every
seed holds intact (CPU-exact: the resumed group ends bitwise where the uninterrupted one does).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffmaxent
from diffmaxent import api, checkpoint, runs
from diffmaxent.cli import main
from diffmaxent.errors import UsageError

SMALL = {"actor_hidden_dims": "32,32", "critic_hidden_dims": "32,32"}
# Off-policy: 40 random warm-up steps, then one gradient step per env step; the last evaluation
# (and checkpoint) comes after 4 of them.
SAC = {**SMALL, "learning_starts": 40, "batch_size": 16, "eval_every": 44, "eval_episodes": 1}
# On-policy: one rollout of 2 x 16 env steps and its update.
PPO = {"num_envs": 2, "rollout_steps": 16, "epochs": 2, "batch_size": 16, "eval_episodes": 1}
CASES = {"sac": (SAC, 44), "ppo": (PPO, 32)}


def _state(run_dir: Path) -> dict[str, np.ndarray]:
    last = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    with np.load(last / checkpoint.STATE_FILE) as data:
        return {name: data[name] for name in data.files}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.METRICS_FILE).open() as file:
        return [
            {k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(file)
        ]


@pytest.mark.parametrize("seed_batching", ["map", "vmap"])
@pytest.mark.parametrize("algo", sorted(CASES))
def test_each_seed_learns_as_it_does_alone(tmp_path, algo, seed_batching):
    """Both ways of batching the seeds (``map``: one after another inside the compiled call;
    ``vmap``: batched kernels) compile the update differently from the single-seed call, so a
    seed's parameters match its single run to float tolerance, not bitwise."""
    overrides, steps = CASES[algo]
    group = diffmaxent.train(
        algo,
        "Pendulum-v1",
        steps=steps,
        seeds=[0, 3],
        out=tmp_path / "group",
        overrides=overrides,
        progress=False,
        seed_batching=seed_batching,
    )
    alone = diffmaxent.train(
        algo,
        "Pendulum-v1",
        steps=steps,
        seed=3,
        out=tmp_path / "alone",
        overrides=overrides,
        progress=False,
    )
    assert isinstance(group, diffmaxent.GroupResult)
    assert [run.run_dir.name for run in group.runs] == ["seed0", "seed3"]
    together, by_itself = _state(group.runs[1].run_dir), _state(alone.run_dir)
    assert together.keys() == by_itself.keys()
    assert int(_rows(alone.run_dir)[-1]["updates"]) > 0  # gradient steps were taken
    for name in by_itself:
        np.testing.assert_allclose(
            together[name], by_itself[name], rtol=1e-4, atol=1e-5, err_msg=name
        )
    # The two seeds differ: their parameters and their training metrics.
    other = _state(group.runs[0].run_dir)
    assert any(not np.allclose(other[name], together[name]) for name in other)
    assert _rows(group.runs[0].run_dir) != _rows(group.runs[1].run_dir)
    assert group.eval_return_means[1] == pytest.approx(alone.eval_return_mean, rel=1e-3)


def test_each_seed_directory_is_an_ordinary_run(tmp_path, capsys):
    overrides, steps = CASES["sac"]
    out = tmp_path / "group"
    sets = [item for k, v in overrides.items() for item in ("--set", f"{k}={v}")]
    argv = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--steps", str(steps), "--quiet"]
    assert main([*argv, "--seeds", "1-2", "--out", str(out), *sets]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0:2] for line in lines[:2]] == [["seed", "1:"], ["seed", "2:"]]
    assert f"group directory {out}" in lines[-1]
    assert json.loads((out / runs.GROUP_FILE).read_text())["seeds"] == [1, 2]
    for seed in (1, 2):
        run_dir = out / f"seed{seed}"
        config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
        assert config["seed"] == seed
        assert runs.read_json(run_dir / runs.STATUS_FILE)["status"] == "complete"
        assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
        loaded = diffmaxent.load(run_dir)
        assert loaded.act(np.zeros(3, np.float32)).shape == (1,)
    # eval names a seed's run, not the group.
    assert main(["eval", str(out)]) == 2
    assert (
        "is a group of seeds trained together; name one of its run directories (seed1, seed2)"
        in capsys.readouterr().err
    )
    # The group refuses to be overwritten, and resumes only to a larger total.
    assert main([*argv, "--seeds", "1-2", "--out", str(out), *sets]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 2
    assert "is complete" in capsys.readouterr().err
    # One seed continues alone, like any run; the group then resumes every seed from the step
    # they all hold to the longest total.
    longer = diffmaxent.train(resume=out / "seed2", steps=steps + 4, progress=False)
    assert longer.metrics[-1]["env_step"] == steps + 4
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    for seed in (1, 2):
        assert _rows(out / f"seed{seed}")[-1]["env_step"] == str(steps + 4)


RUNNER = """
import os, signal, sys
from diffmaxent import checkpoint
from diffmaxent.cli import main

at, calls, original = int(sys.argv[1]), [0], checkpoint._write_npz

def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

checkpoint._write_npz = wrapped
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("algo", sorted(CASES))
def test_group_resumes_after_sigkill_from_the_newest_step_all_seeds_hold(tmp_path, algo):
    """Killed inside the second seed's second checkpoint write: the first seed holds a newer
    checkpoint than the second, so the group resumes both from their first one, and ends
    bitwise where the uninterrupted group does."""
    overrides, _ = CASES[algo]
    settings = {**overrides, "eval_every": 8} if algo == "sac" else {**overrides, "eval_every": 32}
    steps = 64 if algo == "sac" else 128
    sets = [item for k, v in settings.items() for item in ("--set", f"{k}={v}")]

    def arguments(out: Path) -> list[str]:
        return ["train", "--algo", algo, "--env", "Pendulum-v1", "--steps", str(steps),
                "--seeds", "0,1", "--quiet", "--out", str(out), *sets]  # fmt: skip

    reference = tmp_path / "reference"
    assert main(arguments(reference)) == 0
    group = tmp_path / "group"
    # Each checkpoint writes two .npz files per seed, seed 0 first: call 7 is seed 1's second.
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "7", *arguments(group)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    steps_held = [
        [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(group / name / "checkpoints")]
        for name in ("seed0", "seed1")
    ]
    assert len(steps_held[0]) == 2 and len(steps_held[1]) == 1  # seed 1 is a checkpoint behind

    resumed = diffmaxent.train(resume=group, progress=False)
    assert isinstance(resumed, diffmaxent.GroupResult)
    for name in ("seed0", "seed1"):
        assert _rows(group / name) == _rows(reference / name)
        final, expected = _state(group / name), _state(reference / name)
        for leaf in expected:
            np.testing.assert_array_equal(final[leaf], expected[leaf], err_msg=leaf)
        assert runs.read_json(group / name / runs.STATUS_FILE)["status"] == "complete"


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("2", [2]), ("0-1,5", [0, 1, 5])],
)
def test_seed_lists(text, seeds):
    assert api.parse_seeds(text) == seeds
    assert api.parse_seeds(api.format_seeds(seeds)) == seeds


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "4-0"], "--seeds: the range '4-0' is empty"),
        (["--seeds", "a"], "--seeds expects seeds like 0-4 or 0,3,7, got 'a'"),
        (["--seeds", "1,1"], "seed 1 is given twice"),
        (["--seeds", "-1"], "--seeds expects seeds like 0-4 or 0,3,7"),
        (["--seeds", "0,1", "--seed", "3"], "give --seed or --seeds, not both"),
    ],
)
def test_bad_seed_lists_end_with_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["train", "--algo", "sac", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_api_refuses_seed_and_seeds_together(tmp_path):
    with pytest.raises(UsageError, match="give seed or seeds, not both"):
        diffmaxent.train("sac", seed=2, seeds=[0, 1], out=tmp_path / "never")
    with pytest.raises(UsageError, match="non-empty list"):
        diffmaxent.train("sac", seeds=[], out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_damaged_group_file_is_refused(tmp_path, capsys):
    group = tmp_path / "group"
    group.mkdir()
    (group / runs.GROUP_FILE).write_text('{"seeds": [0, "x"]')
    assert main(["train", "--resume", str(group)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "group.json" in err
