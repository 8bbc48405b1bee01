"""Errors and warnings that the CLI reports as one line each.

Exit statuses of ``diffmaxent``: 0 done; 2 bad input or an unusable file (:class:`UsageError`,
including filesystem errors); 3 a run stopped on a NaN or Inf (:class:`TrainingDiverged`);
130 / 143 a run stopped by SIGINT / SIGTERM after writing a checkpoint
(:class:`TrainingInterrupted`).
"""

from __future__ import annotations

import signal
from pathlib import Path


class DiffmaxentWarning(UserWarning):
    """A warning the CLI prints as one line, ``diffmaxent: warning: ...``."""


class PresetSuiteWarning(DiffmaxentWarning):
    """A preset tuned for one benchmark suite was picked for an env of another."""


class PaperEnvWarning(DiffmaxentWarning):
    """A preset with the papers' Gym settings was picked for a Gym version that is not the one
    the papers' numbers came from."""


class DamagedFileWarning(DiffmaxentWarning):
    """A damaged run file was skipped in favour of an older intact one."""


class BiasedEstimatorWarning(DiffmaxentWarning):
    """A setting that runs but learns from an estimate known to be biased (e.g. the automatic
    temperature on the rectangle rule's log-probability)."""


class InexactResumeWarning(DiffmaxentWarning):
    """A resumed run cannot continue exactly as the uninterrupted one (an env's state was not
    saved)."""


class UsageError(ValueError):
    """Bad user input: an unknown name, a value out of range, a run directory in the way, a
    damaged file with nothing intact to fall back to.

    The message is one line that names the problem and, where there are few, the accepted values.
    """


class TrainingStopped(Exception):
    """A run that stopped before its last step, with a checkpoint to resume from."""

    exit_status = 1

    def __init__(self, message: str, run_dir: Path, env_step: int, checkpoint: Path | None):
        super().__init__(message)
        self.run_dir = run_dir
        self.env_step = env_step
        self.checkpoint = checkpoint


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: the run finished its current step and wrote a checkpoint at it (seeds
    trained together: each seed's run wrote one, and ``checkpoint`` is None)."""

    def __init__(self, signum: int, run_dir: Path, env_step: int, checkpoint: Path | None):
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "a checkpoint per seed"
        super().__init__(
            f"{name} at step {env_step}: {where}; resume with: diffmaxent train --resume {run_dir}",
            run_dir,
            env_step,
            checkpoint,
        )
        self.signum = signum
        self.exit_status = 128 + signum


class TrainingDiverged(TrainingStopped):
    """A NaN or Inf in a loss, metric or parameter; the last finite checkpoint is kept."""

    exit_status = 3

    def __init__(self, what: str, run_dir: Path, env_step: int, checkpoint: Path | None):
        last = (
            f"last good checkpoint {checkpoint}"
            if checkpoint is not None
            else "no checkpoint was written before it"
        )
        super().__init__(
            f"non-finite {what} at step {env_step}; {last}", run_dir, env_step, checkpoint
        )
        self.what = what


class SeedsDiverged(TrainingDiverged):
    """Seeds trained together: some of them diverged (each one's run directory says where); the
    others ran to the end."""

    def __init__(self, diverged: dict[int, TrainingDiverged], group_dir: Path, completed: int):
        seed, first = next(iter(diverged.items()))
        TrainingStopped.__init__(
            self,
            f"{len(diverged)} of {len(diverged) + completed} seeds diverged (seed {seed}: "
            f"{first}); " + ("the other seeds completed" if completed else "none completed"),
            group_dir,
            first.env_step,
            None,
        )
        self.what = first.what
        self.diverged = diverged
