"""Sweeps on Ray Tune: spec expansion and validation (no Ray needed), and a real 2-trial sweep on
a local Ray that the sweep starts and stops itself, then re-run after an interruption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from diffmaxent import checkpoint, runs, sweep
from diffmaxent.cli import main

SPEC = """
algo: sac
env: Pendulum-v1
steps: 48
seeds: [0]
overrides: {learning_starts: 16, batch_size: 16, eval_every: 16, eval_episodes: 1,
            actor_hidden_dims: "32,32", critic_hidden_dims: "32,32"}
grid: {actor_lr: [0.0003, 0.001]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_grid_expands_every_combination_times_every_seed():
    spec = {"algo": ["sac", "maxentdp"], "env": "Pendulum-v1", "steps": 100, "seeds": "0-2",
            "grid": {"actor_lr": [0.001, 0.0003], "tau": [0.01, 0.005]}}  # fmt: skip
    trials = sweep.expand(spec)
    assert len(trials) == 2 * 4 * 3
    assert len({trial.name for trial in trials}) == len(trials)
    assert trials[0].name == "sac-Pendulum-v1-cpu-actor_lr=0.001-tau=0.01-seed0"
    assert {trial.seed for trial in trials} == {0, 1, 2}


def test_random_search_draws_the_same_trials_every_time():
    random = {"samples": 3, "seed": 7, "actor_lr": {"loguniform": [1e-4, 1e-3]},
              "batch_size": {"choice": [64, 128]}, "tau": {"uniform": [0.001, 0.01]}}  # fmt: skip
    spec = {"algo": "sac", "env": "Pendulum-v1", "steps": 100, "seeds": [0, 1], "random": random}
    first, second = sweep.expand(spec), sweep.expand(spec)
    assert first == second and len(first) == 6
    for trial in first:
        assert 1e-4 <= trial.overrides["actor_lr"] <= 1e-3
        assert trial.overrides["batch_size"] in (64, 128)
        assert 0.001 <= trial.overrides["tau"] <= 0.01
    assert len({trial.overrides["actor_lr"] for trial in first}) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("algo: nope\nenv: Pendulum-v1\nsteps: 10\n", "unknown algo 'nope'"),
        ("algo: sac\nenv: NoSuchEnv-v9\nsteps: 10\n", "NoSuchEnv-v9"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\ngrid: {nope: [1, 2]}\n",
         "unknown hyperparameter 'nope' for sac"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\ngrid: {tau: [0.01, -1]}\n", "tau"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\nseeds: [0, 0]\n", "seed 0 is given twice"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: -3\n", "steps must be a positive integer"),
        ("algo: sac\nenv: [Pendulum-v1\n", "is not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\nseed: 3\n", "unknown sweep key 'seed'"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\ngrid: {tau: [0.01]}\nrandom: {samples: 2}\n",
         "give grid or random, not both"),
        ("algo: sac\nenv: Pendulum-v1\nsteps: 10\nrandom: {samples: 2, tau: {normal: [0, 1]}}\n",
         "random: tau must be one of"),
    ],
)  # fmt: skip
def test_bad_spec_ends_with_one_line_before_any_trial(tmp_path, capsys, text, message):
    out = tmp_path / "sweep"
    assert main(["sweep", str(_write(tmp_path, text)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_missing_spec_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read sweep spec" in capsys.readouterr().err


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.METRICS_FILE).open() as file:
        return [
            {k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(file)
        ]


def test_local_ray_sweep_and_its_rerun_after_an_interruption(tmp_path, capsys):
    ray = pytest.importorskip("ray", reason="the [sweep] extra is not installed")
    spec, out = _write(tmp_path, SPEC), tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--max-concurrent", "2"]) == 0
    assert "2 trials trained, 0 already complete, 0 failed" in capsys.readouterr().out
    assert not ray.is_initialized()  # the sweep stopped the Ray it started
    names = [trial["name"] for trial in json.loads((out / sweep.SWEEP_FILE).read_text())["trials"]]
    assert names == [f"sac-Pendulum-v1-cpu-actor_lr={lr}-seed0" for lr in ("0.0003", "0.001")]
    for name in names:
        assert runs.read_json(out / name / runs.STATUS_FILE)["status"] == "complete"
        assert json.loads((out / name / runs.CONFIG_FILE).read_text())["steps"] == 48
    assert main(["compare", str(out), "--format", "csv"]) == 0  # a sweep is read directly
    assert capsys.readouterr().out.count("Pendulum-v1,sac,2,48") == 1

    # Interrupt it on disk: the second trial lost its last checkpoint (killed just before it).
    finished, interrupted = out / names[0], out / names[1]
    expected = _rows(interrupted)
    newest = checkpoint.list_checkpoints(interrupted / runs.CHECKPOINT_DIR)[-1]
    checkpoint.remove(newest)
    runs.write_status(interrupted, "interrupted", 32)
    untouched = (finished / runs.METRICS_FILE).stat().st_mtime_ns
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "1 trials trained, 1 already complete, 0 failed" in capsys.readouterr().out
    assert (finished / runs.METRICS_FILE).stat().st_mtime_ns == untouched
    assert _rows(interrupted) == expected  # resumed exactly where it stopped
    assert runs.read_json(interrupted / runs.STATUS_FILE)["status"] == "complete"

    # Another spec in the same directory is refused.
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("steps: 48", "steps: 64"))
    assert main(["sweep", str(other), "--out", str(out)]) == 2
    assert "holds another sweep" in capsys.readouterr().err
