"""Runs that survive bad input and faults: the run-directory lock, the non-finite guard, damaged
checkpoints and JSON files, filesystem errors, writes that crash half-way, and malformed input.
Every failure is one line on stderr and a non-zero exit, and nothing intact is lost."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffmaxent
from diffmaxent import checkpoint, runs
from diffmaxent.cli import main
from diffmaxent.errors import UsageError

TINY = [
    "--algo",
    "sac",
    "--env",
    "Pendulum-v1",
    "--quiet",
    "--set",
    "actor_hidden_dims=16,16",
    "--set",
    "critic_hidden_dims=16,16",
    "--set",
    "batch_size=16",
    "--set",
    "learning_starts=20",
    "--set",
    "eval_every=40",
    "--set",
    "eval_episodes=1",
]


def _train(out: Path, steps: int = 120, *extra: str) -> int:
    return main(["train", *TINY, "--steps", str(steps), "--out", str(out), *extra])


def _one_error_line(capsys, fragment: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("diffmaxent: error:")]
    assert len(errors) == 1 and fragment in errors[0], lines
    assert not any(line.startswith("Traceback") for line in lines)
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished run with checkpoints at steps 40, 80 and 120."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert _train(run_dir) == 0
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


# --- the lock ------------------------------------------------------------------------------------

HOLD = """
import sys, time
from diffmaxent import runs
lock = runs.RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def held(trained, tmp_path):
    """A copy of a run whose lock another process holds (as a live training process does)."""
    run_dir = _copy(trained, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    yield run_dir
    holder.kill()
    holder.wait()


@pytest.mark.parametrize(
    "arguments,fragment",
    [([], "already holds a run"), (["--force"], "in use by process"), (["--resume"], "in use")],
    ids=["train", "force", "resume"],
)
def test_a_live_run_refuses_a_second_process_and_is_left_untouched(
    held, capsys, arguments, fragment
):
    before = {p: p.read_bytes() for p in held.rglob("*") if p.is_file() and p.name != ".lock"}
    if arguments == ["--resume"]:
        status = main(["train", "--resume", str(held), "--steps", "200", "--quiet"])
    else:
        status = _train(held, 120, *arguments)
    assert status == 2
    _one_error_line(capsys, fragment)
    after = {p: p.read_bytes() for p in held.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_the_lock_is_released_when_the_holder_is_killed(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UsageError, match="in use"):
        runs.RunLock(run_dir).acquire()
    holder.kill()
    holder.wait()
    runs.RunLock(run_dir).acquire().release()


def test_force_removes_the_old_run_only_after_the_new_one_is_valid(trained, tmp_path, capsys):
    run_dir = _copy(trained, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert _train(run_dir, 120, "--force", "--set", "gamma=7") == 2
    _one_error_line(capsys, "gamma")
    assert main(["train", "--env", "NoSuchEnv-v0", "--out", str(run_dir), "--force"]) == 2
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    (run_dir / "notes.txt").write_text("mine")
    assert _train(run_dir, 40, "--force") == 0
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert [r["env_step"] for r in runs.read_metrics(run_dir)] == [40.0]


def test_status_records_how_a_run_ended(trained):
    status = runs.read_json(trained / runs.STATUS_FILE)
    assert status["status"] == "complete" and status["env_step"] == 120


# --- the non-finite guard ------------------------------------------------------------------------


def test_a_diverging_run_stops_with_a_distinct_status_and_keeps_a_finite_checkpoint(
    tmp_path, capsys
):
    run_dir = tmp_path / "run"
    # A checkpoint at step 40 before the first update; then lr 1e4 blows the critic up.
    status = _train(
        run_dir,
        2_000,
        "--set",
        "critic_lr=1e4",
        "--set",
        "learning_starts=41",
        "--set",
        "checkpoint_keep=1",
    )
    assert status == 3
    line = _one_error_line(capsys, "non-finite")
    assert "last good checkpoint" in line and "step_000000040" in line
    record = runs.read_json(run_dir / runs.STATUS_FILE)
    assert record["status"] == "diverged" and record["env_step"] > 40
    kept = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)
    assert [checkpoint.step_of(p) for p in kept] == [40]
    with np.load(kept[0] / checkpoint.STATE_FILE) as data:
        assert all(np.all(np.isfinite(data[n])) for n in data.files if data[n].dtype.kind == "f")
    assert diffmaxent.load(run_dir).env_step == 40


def test_a_nan_metric_is_written_out_and_stops_the_run(tmp_path, capsys, monkeypatch):
    from diffmaxent.agents import sac

    make = sac.make

    def make_with_nan_loss(config, spec):
        agent = make(config, spec)

        def update(state, batch, key):
            state, metrics = agent.update(state, batch, key)
            return state, {**metrics, "critic_loss": metrics["critic_loss"] * float("nan")}

        return agent._replace(update=update)

    monkeypatch.setitem(
        diffmaxent.ALGOS,
        "sac",
        dataclasses.replace(diffmaxent.ALGOS["sac"], make=make_with_nan_loss),
    )
    run_dir = tmp_path / "run"
    assert _train(run_dir, 200) == 3
    line = _one_error_line(capsys, "non-finite critic_loss (nan) at step 20")
    assert "step_000000000" not in line
    last = (run_dir / runs.METRICS_FILE).read_text().splitlines()[-1].split(",")
    header = (run_dir / runs.METRICS_FILE).read_text().splitlines()[0].split(",")
    row = dict(zip(header, last, strict=True))
    assert row["env_step"] == "20" and row["critic_loss"] == "nan"
    assert row["eval_return_mean"] == ""  # not measured at that step
    json.loads((run_dir / runs.STATUS_FILE).read_text())  # strict JSON


def test_metrics_write_nan_explicitly_and_blank_for_not_measured(tmp_path):
    log = runs.MetricsLog(tmp_path / "m.csv", ["a", "b", "c"])
    log.append({"a": 1.0, "b": math.nan})
    assert (tmp_path / "m.csv").read_text().splitlines() == ["a,b,c", "1,nan,"]
    runs.write_json(tmp_path / "s.json", {"x": math.nan, "y": [math.inf, 1.0]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": None, "y": [None, 1.0]}


# --- damaged files -------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "invalid":
        path.write_text("{not json" if path.suffix == ".json" else "not a zip")
    elif how == "foreign":
        if path.suffix == ".json":
            path.write_text(json.dumps({"something": "else"}))
        else:
            np.savez(path, other=np.zeros(3))
    elif how == "missing":
        path.unlink()


DAMAGES = ["truncated", "empty", "invalid", "foreign", "missing"]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", [checkpoint.STATE_FILE, checkpoint.META_FILE])
def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(
    trained, tmp_path, capsys, name, how
):
    run_dir = _copy(trained, tmp_path)
    newest = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    _damage(newest / name, how)
    loaded = diffmaxent.load(run_dir)
    assert loaded.env_step == 80
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "step_000000120" in warnings[0] and "damaged" in warnings[0]
    assert "checkpoint at step 80" in captured.out
    # --resume continues from the intact checkpoint and ends where the uninterrupted run did.
    assert main(["train", "--resume", str(run_dir), "--steps", "160", "--quiet"]) == 0
    assert [r["env_step"] for r in runs.read_metrics(run_dir)] == [40.0, 80.0, 120.0, 160.0]


@pytest.mark.parametrize("how", DAMAGES)
def test_no_intact_checkpoint_left_ends_with_one_line(trained, tmp_path, capsys, how):
    run_dir = _copy(trained, tmp_path)
    for directory in checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR):
        _damage(directory / checkpoint.STATE_FILE, how)
    for command in (["eval", str(run_dir)], ["train", "--resume", str(run_dir), "--steps", "200"]):
        assert main(command) == 2
        _one_error_line(capsys, "no intact checkpoint")


@pytest.mark.parametrize("how", ["truncated", "empty", "invalid", "foreign", "missing"])
def test_a_damaged_config_json_uses_the_config_saved_in_a_checkpoint(
    trained, tmp_path, capsys, how
):
    run_dir = _copy(trained, tmp_path)
    _damage(run_dir / runs.CONFIG_FILE, how)
    if how == "missing":
        with pytest.raises(UsageError):
            runs.read_run_config(run_dir)
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    err = capsys.readouterr().err
    assert "config.json" in err and "using the config saved in" in err
    assert main(["train", "--resume", str(run_dir), "--steps", "160", "--quiet"]) == 0
    json.loads((run_dir / runs.CONFIG_FILE).read_text())  # written again, intact


def test_a_directory_that_is_no_run_is_refused_and_left_as_it_was(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        for command in (["eval", str(target)], ["train", "--resume", str(target)]):
            assert main(command) == 2
            _one_error_line(capsys, "not a run directory")
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()


def test_a_complete_run_resumes_only_to_a_larger_total(trained, tmp_path, capsys):
    run_dir = _copy(trained, tmp_path)
    assert main(["train", "--resume", str(run_dir)]) == 2
    _one_error_line(capsys, "is complete")
    assert main(["train", "--resume", str(run_dir), "--algo", "dime"]) == 2
    _one_error_line(capsys, "only --steps")


# --- crashes mid-write and filesystem errors ------------------------------------------------------


def test_a_crash_in_the_middle_of_a_write_keeps_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runs.write_json(path, {"version": 1})

    def crash(self, *args, **kwargs):
        raise OSError(errno.EIO, "injected crash")

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(OSError):
        runs.write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_crash_during_a_checkpoint_save_leaves_the_older_ones_loadable(
    trained, tmp_path, monkeypatch
):
    run_dir = _copy(trained, tmp_path)
    loaded = diffmaxent.load(run_dir)
    calls = []

    def failing(path, arrays):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "_write_npz", failing)
    target = checkpoint.step_directory(run_dir / runs.CHECKPOINT_DIR, 160)
    with pytest.raises(OSError):
        checkpoint.save(target, loaded.state, {"env_step": 160, "config": {}})
    monkeypatch.undo()
    assert calls and not target.exists()
    assert diffmaxent.load(run_dir).env_step == 120


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.csv"),
        PermissionError(errno.EACCES, "Permission denied", "runs/x"),
        OSError(errno.EROFS, "Read-only file system", "runs/x"),
    ],
    ids=["disk-full", "permission", "read-only"],
)
def test_filesystem_errors_end_with_one_line(tmp_path, capsys, monkeypatch, error):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs, "write_text", refuse)
    assert _train(tmp_path / "run", 40) == 2
    line = _one_error_line(capsys, error.strerror)
    assert error.filename in line


def test_a_name_too_long_ends_with_one_line(tmp_path, capsys):
    assert _train(tmp_path / ("x" * 300), 40) == 2
    _one_error_line(capsys, "too long")


# --- malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        (["--env", "a:b:c"], "more than one ':'"),
        (["--set", "actor_hidden_dims=64,,64"], "actor_hidden_dims"),
        (["--set", "actor_hidden_dims=64,"], "actor_hidden_dims"),
    ],
)
def test_malformed_input_is_rejected_in_one_line(tmp_path, capsys, arguments, fragment):
    out = tmp_path / "run"
    assert main(["train", "--algo", "sac", "--out", str(out), *arguments]) == 2
    _one_error_line(capsys, fragment)
    assert not out.exists()


def test_act_refuses_non_finite_observations(trained):
    agent = diffmaxent.load(trained)
    with pytest.raises(ValueError, match="NaN or Inf"):
        agent.act(np.array([0.0, np.nan, 1.0], np.float32))
    assert np.all(np.isfinite(agent.act(np.zeros(3, np.float32))))


def test_an_interrupted_checkpoint_write_leaves_a_temporary_that_resume_removes(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    leftover = run_dir / runs.CHECKPOINT_DIR / "step_000000160.tmp"
    leftover.mkdir()
    (leftover / checkpoint.STATE_FILE).write_bytes(b"half")
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(leftover.parent)] == [
        40,
        80,
        120,
    ]
    assert main(["train", "--resume", str(run_dir), "--steps", "160", "--quiet"]) == 0
    assert not leftover.exists()


def test_resuming_an_env_whose_state_cannot_be_saved_warns_that_it_is_not_exact(
    tmp_path, monkeypatch
):
    from diffmaxent.errors import InexactResumeWarning, TrainingInterrupted
    from diffmaxent.loops import bookkeeping

    original, calls = bookkeeping.Progress.advance, []

    def advance(self, steps=1):
        original(self, steps)
        calls.append(steps)
        if len(calls) == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(bookkeeping.Progress, "advance", advance)
    run_dir = tmp_path / "run"
    settings = {"actor_hidden_dims": "8", "critic_hidden_dims": "8", "batch_size": 8}
    settings.update({"learning_starts": 10, "eval_every": 20, "eval_episodes": 1})
    with pytest.raises(TrainingInterrupted) as stopped:
        diffmaxent.train(
            "sac", "probe_envs:Probe-v0", steps=60, out=run_dir, progress=False, overrides=settings
        )
    assert stopped.value.exit_status == 143 and stopped.value.env_step == 30
    monkeypatch.undo()
    with pytest.warns(InexactResumeWarning, match="not bit-exact") as caught:
        diffmaxent.train(resume=run_dir, progress=False)
    assert sorted(str(w.message).split("'s state")[0] for w in caught) == [
        "the evaluation env",
        "the training env",
    ]
    assert [r["env_step"] for r in runs.read_metrics(run_dir)] == [20.0, 40.0, 60.0]
