"""TensorBoard event files in every run directory (read back with TensorBoard's own reader), and
Weights & Biases as an opt-in (offline mode, no network)."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import diffmaxent
from diffmaxent import checkpoint, runs
from diffmaxent.cli import main

SMALL = {"actor_hidden_dims": "32,32", "critic_hidden_dims": "32,32", "batch_size": 16,
         "learning_starts": 8, "eval_every": 8, "eval_episodes": 1}  # fmt: skip


def _board(run_dir: Path) -> EventAccumulator:
    board = EventAccumulator(str(run_dir))
    board.Reload()
    return board


def _csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.METRICS_FILE).open() as file:
        return list(csv.DictReader(file))


def test_event_files_hold_every_evaluation_row(tmp_path):
    result = diffmaxent.train("sac", "Pendulum-v1", steps=24, out=tmp_path / "run",
                              overrides=SMALL, progress=False)  # fmt: skip
    board = _board(result.run_dir)
    tags = set(board.Tags()["scalars"])
    assert {"eval/return_mean", "eval/return_std", "train/updates", "train/critic_loss",
            "train/actor_loss", "perf/env_steps_per_s"} <= tags  # fmt: skip
    assert "train/episode_return" not in tags  # no episode ended yet: a blank cell, not a zero
    rows = _csv(result.run_dir)
    events = board.Scalars("eval/return_mean")
    assert [event.step for event in events] == [int(row["env_step"]) for row in rows]
    for event, row in zip(events, rows, strict=True):
        assert event.value == pytest.approx(float(row["eval_return_mean"]), abs=0.006)
    losses = board.Scalars("train/critic_loss")
    assert losses[-1].value == pytest.approx(float(rows[-1]["critic_loss"]), rel=1e-6)


def test_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    diffmaxent.train("sac", "Pendulum-v1", steps=32, out=run_dir, overrides=SMALL, progress=False)
    # As if killed just before the checkpoint at step 32 was written: resume starts from step 24
    # and writes the row of step 32 again.
    newest = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    shutil.rmtree(newest)
    diffmaxent.train(resume=run_dir, steps=40, progress=False)
    events = _board(run_dir).Scalars("eval/return_mean")
    rows = _csv(run_dir)
    assert [event.step for event in events] == [8, 16, 24, 32, 40]
    assert [event.value for event in events] == pytest.approx(
        [float(row["eval_return_mean"]) for row in rows], abs=0.006
    )


def test_force_removes_the_previous_event_files(tmp_path):
    run_dir = tmp_path / "run"
    for _ in range(2):
        diffmaxent.train("sac", "Pendulum-v1", steps=8, out=run_dir, overrides=SMALL,
                         progress=False, force=True)  # fmt: skip
    assert len(list(run_dir.glob(runs.EVENTS_PREFIX + "*"))) == 1


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    argv = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--steps", "16", "--quiet",
            "--out", str(run_dir), "--wandb"]  # fmt: skip
    sets = [item for k, v in SMALL.items() for item in ("--set", f"{k}={v}")]
    assert main([*argv, *sets]) == 0
    run_id = (run_dir / runs.WANDB_ID_FILE).read_text().strip()
    offline = list((run_dir / runs.WANDB_DIR).glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0


def test_wandb_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    out = tmp_path / "never"
    assert main(["train", "--algo", "sac", "--out", str(out), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert err == "diffmaxent: error: --wandb needs wandb: pip install 'diffmaxent[wandb]'\n"
    assert not out.exists()
