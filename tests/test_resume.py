"""Exact resume: a run killed at any moment (SIGKILL between evaluations, right after a
checkpoint, inside a checkpoint write) or stopped by SIGTERM / SIGINT, then resumed, writes the same
``metrics.csv`` rows (every column but ``wall_seconds``) and ends in the same agent state as the
uninterrupted run with the same seed. CPU-exact by design: the comparison is bitwise.

Each interrupted run is a subprocess whose fault is injected at a fixed point by a small runner
that wraps one library function before calling the CLI, so the moment of the kill is exact.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffmaxent
from diffmaxent import checkpoint, runs
from diffmaxent.cli import main

# Agent, env, steps and settings: several evaluations and checkpoints in a few hundred steps.
REPLAY = {"learning_starts": 50, "eval_every": 100, "eval_episodes": 1, "batch_size": 32}
CASES = {
    "sac": (
        "Pendulum-v1",
        400,
        {**REPLAY, "actor_hidden_dims": "32,32", "critic_hidden_dims": "32,32"},
    ),
    "maxentdp": (
        "MultiGoal-v0",
        400,
        {
            **REPLAY,
            "actor_hidden_dims": "32,32",
            "critic_hidden_dims": "32,32",
            "num_qne_samples": 8,
            "num_diffusion_steps": 3,
            "num_logprob_levels": 3,
            "num_logprob_samples": 2,
            "eval_candidates": 3,
        },
    ),
    "dime": (
        "Pendulum-v1",
        400,
        {
            **REPLAY,
            "actor_hidden_dims": "32,32",
            "critic_hidden_dims": "32,32",
            "num_diffusion_steps": 3,
            "time_dim": 16,
            "num_frequencies": 8,
            "num_atoms": 11,
        },
    ),
    "ppo": (
        "Pendulum-v1",
        320,
        {
            "num_envs": 2,
            "rollout_steps": 16,
            "epochs": 2,
            "batch_size": 32,
            "eval_every": 64,
            "eval_episodes": 1,
        },
    ),
}
# Where each fault strikes: the n-th call of the wrapped function. `advance` is called once per
# step of the replay loop and once per rollout of the rollout loop (32 env steps here).
FAULTS = {
    "sigkill-between-evaluations": ("advance", "SIGKILL", {"replay": 250, "rollout": 7}),
    "sigkill-after-a-checkpoint": ("prune", "SIGKILL", {"replay": 2, "rollout": 2}),
    "sigkill-inside-a-checkpoint-write": ("write_npz", "SIGKILL", {"replay": 4, "rollout": 4}),
    "sigterm": ("advance", "SIGTERM", {"replay": 230, "rollout": 5}),
    "sigint": ("advance", "SIGINT", {"replay": 170, "rollout": 4}),
}
RUNNER = """
import os, signal, sys
from diffmaxent import checkpoint
from diffmaxent.cli import main
from diffmaxent.loops import bookkeeping

target, signal_name, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner, name = {
    "advance": (bookkeeping.Progress, "advance"),
    "prune": (checkpoint, "prune"),
    "write_npz": (checkpoint, "_write_npz"),
}[target]
original, calls = getattr(owner, name), [0]

def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), getattr(signal, signal_name))
    return result

setattr(owner, name, wrapped)
sys.exit(main(sys.argv[4:]))
"""


def _arguments(algo: str, out: Path) -> list[str]:
    env, steps, settings = CASES[algo]
    sets = [item for k, v in settings.items() for item in ("--set", f"{k}={v}")]
    return [
        "train",
        "--algo",
        algo,
        "--env",
        env,
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--quiet",
        *sets,
    ]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.METRICS_FILE).open() as f:
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(f)]


def _final_state(run_dir: Path) -> dict[str, np.ndarray]:
    last = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    with np.load(last / checkpoint.STATE_FILE) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted run of every case."""
    root = tmp_path_factory.mktemp("reference")
    made = {}
    for algo in CASES:
        assert main(_arguments(algo, root / algo)) == 0
        made[algo] = root / algo
    return made


# Every fault for sac and ppo (a replay and a rollout agent); the diffusion agents, whose training
# processes take 30 s each to start and compile, one kill in the default run and the rest `slow`.
DEFAULT_FAULT_FOR_SLOW_STARTS = "sigkill-after-a-checkpoint"
CASE_PARAMS = [
    pytest.param(
        algo,
        fault,
        marks=pytest.mark.slow
        if algo not in ("sac", "ppo") and fault != DEFAULT_FAULT_FOR_SLOW_STARTS
        else (),
    )
    for algo in sorted(CASES)
    for fault in sorted(FAULTS)
]


@pytest.mark.parametrize("algo,fault", CASE_PARAMS)
def test_interrupted_and_resumed_run_writes_the_uninterrupted_rows(
    tmp_path, references, algo, fault
):
    target, signal_name, at = FAULTS[fault]
    loop = diffmaxent.ALGOS[algo].loop.name
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            target,
            signal_name,
            str(at[loop]),
            *_arguments(algo, run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    expected_status = {"SIGKILL": -9, "SIGTERM": 143, "SIGINT": 130}[signal_name]
    assert result.returncode == expected_status, result.stderr[-2000:]
    if signal_name != "SIGKILL":
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"interrupted by {signal_name} at step" in lines[0]
        assert f"--resume {run_dir}" in lines[0]
        status = runs.read_json(run_dir / runs.STATUS_FILE)
        assert status["status"] == "interrupted"
    assert _rows(run_dir) != _rows(references[algo])  # it did stop early

    resumed = diffmaxent.train(resume=run_dir, progress=False)
    assert resumed.run_dir == run_dir
    assert _rows(run_dir) == _rows(references[algo])
    final, expected = _final_state(run_dir), _final_state(references[algo])
    assert final.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)
    assert runs.read_json(run_dir / runs.STATUS_FILE)["status"] == "complete"
