"""What every training loop shares: the resolved config of a run, evaluation, the progress
display, checkpoints to resume from, the guard against NaNs, stopping on signals, and the
recorder that fills the run directory.

A loop (:mod:`diffmaxent.loops.replay`, :mod:`diffmaxent.loops.rollout`) only trains; it hands
the agent state and a ``snapshot`` of its own state (a function returning the loop's arrays and
JSON) to :class:`RunRecorder`, which at an evaluation point evaluates on a separate env, appends a
row to ``metrics.csv``, writes a checkpoint and redraws ``curve.png``; after every update checks
the metrics for NaN and Inf; after every step writes a checkpoint and stops if SIGINT or SIGTERM
arrived; and at the end writes the env's report figure and ``summary.json``.

A checkpoint holds everything the run's future depends on, so a resumed run writes the same rows
as the uninterrupted one: the agent state, the loop's state (its JAX key and numpy generator, the
current observations, counters, the last update's metrics), the training and evaluation envs'
state (:mod:`diffmaxent.envs.snapshot`), the metrics rows so far and the wall time. Where an env's
state cannot be saved (MyoSuite), resume starts it afresh with a seed drawn from the run's seed
and step, and says so in one line: such a resume is not bit-exact.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from diffmaxent import checkpoint, runs, trackers
from diffmaxent.buffer import ReplayBuffer, ReplayDataError
from diffmaxent.config import hp, to_json_dict
from diffmaxent.envs import env_report
from diffmaxent.envs.factory import EnvSpec, RescaledEnv, make_env
from diffmaxent.envs.snapshot import EnvStateUnsupported, capture_env_state, restore_env_state
from diffmaxent.errors import (
    InexactResumeWarning,
    SeedsDiverged,
    TrainingDiverged,
    TrainingInterrupted,
    UsageError,
)

EVAL_SEED_OFFSET = 10_000  # the evaluation env's seed is seed + this, so it never replays training

Arrays = dict[str, np.ndarray]
# A loop's own state for a checkpoint: (arrays, JSON-serialisable info).
Snapshot = Callable[[], tuple[Arrays, dict[str, Any]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSchedule:
    """Loop settings every loop has: when and how to evaluate and checkpoint, the action repeat
    of its envs, and the float32 matrix-product precision its agent is traced at."""

    eval_every: int = hp(2_000, "env steps between evaluations and checkpoints", low=1)
    eval_episodes: int = hp(10, "episodes per evaluation", low=1)
    eval_deterministic: bool = hp(True, "evaluate the policy's deterministic action")
    checkpoint_keep: int = hp(3, "checkpoints kept (newest)", low=1)
    action_repeat: int = hp(1, "env steps per agent action, rewards summed (DMC)", low=1)
    matmul_precision: Literal["auto", "default", "high", "highest"] = hp(
        "auto", "float32 matmul precision (GPU default: TF32); auto = the algorithm's choice"
    )


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """Everything that defines a run; ``to_json`` is what ``config.json`` holds."""

    algo: str
    env: str
    preset: str
    seed: int
    steps: int
    agent: Any
    loop: Any  # the loop's settings, an EvaluationSchedule with more fields

    def to_json(self, env_spec: EnvSpec | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "algo": self.algo,
            "env": self.env,
            "preset": self.preset,
            "seed": self.seed,
            "steps": self.steps,
            "agent": to_json_dict(self.agent),
            "loop": to_json_dict(self.loop),
        }
        if env_spec is not None:
            data["env_spec"] = dataclasses.asdict(env_spec)
        return data

    def make_env(self, seed: int, render_mode: str | None = None) -> RescaledEnv:
        """The run's env (with its action repeat), seeded ``seed``."""
        return make_env(
            self.env, seed=seed, action_repeat=self.loop.action_repeat, render_mode=render_mode
        )


class StopRequest:
    """Set by the SIGINT / SIGTERM handler; the loop finishes its step, writes a checkpoint and
    stops."""

    def __init__(self) -> None:
        self.signum: int | None = None


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a loop is given besides the agent: the config, the env's description, where to write,
    how to show progress (True: a bar, False: silence, None: a bar on a terminal and one line per
    evaluation otherwise), whether to resume from the run's newest intact checkpoint, the
    stop request the signal handlers set, and, for one of several seeds trained together, their
    group directory and how they are batched."""

    config: ResolvedConfig
    env_spec: EnvSpec
    run_dir: Path
    progress: bool | None
    resume: bool = False
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)
    group_dir: Path | None = None
    wandb: bool = False  # also log to Weights & Biases
    seed_batching: str = "auto"  # how seeds trained together share a compiled call (loops.seeds)


@dataclasses.dataclass
class ResumePoint:
    """A checkpoint a loop continues from."""

    directory: Path
    env_step: int
    state: Any  # the agent state
    arrays: Arrays  # the loop's arrays (loop.npz)
    info: dict[str, Any]  # the loop's JSON state
    extra: Any  # what the loop's own check returned (the replay buffer)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    eval_return_mean: float
    eval_return_std: float
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    headline: str = ""  # the env's few words on the final evaluation (MultiGoal: goals reached)


@dataclasses.dataclass
class GroupResult:
    """Several seeds trained together: their group directory and each seed's result."""

    group_dir: Path
    runs: list[TrainResult]

    @property
    def eval_return_means(self) -> list[float]:
        return [run.eval_return_mean for run in self.runs]


@dataclasses.dataclass
class Evaluation:
    returns: np.ndarray  # [episodes]
    last_infos: list[dict[str, Any]]  # each episode's final info
    trajectories: list[np.ndarray]  # each [steps + 1, obs_dim] when recorded, else empty


def evaluate(
    agent: Any,
    state: Any,
    env: RescaledEnv,
    episodes: int,
    key: jax.Array,
    deterministic: bool,
    record: bool = False,
    on_frame: Callable[[np.ndarray], None] | None = None,
) -> Evaluation:
    """Run ``episodes`` full episodes; ``record`` keeps every episode's observations, and
    ``on_frame`` receives ``env.render()`` after every reset and step (frames are streamed, not
    kept: a 1000-step episode at 480 x 480 would hold 0.7 GB)."""
    returns, last_infos, trajectories = [], [], []
    for _ in range(episodes):
        obs, info = env.reset()
        if on_frame is not None:
            on_frame(env.render())
        visited = [obs]
        total, done = 0.0, False
        while not done:
            key, act_key = jax.random.split(key)
            action = np.asarray(agent.act(state, obs[None], act_key, deterministic))[0]
            obs, reward, terminated, truncated, info = env.step(action)
            if on_frame is not None:
                on_frame(env.render())
            total += reward
            done = terminated or truncated
            if record:
                visited.append(obs)
        returns.append(total)
        last_infos.append(info)
        if record:
            trajectories.append(np.stack(visited))
    return Evaluation(np.asarray(returns, dtype=np.float64), last_infos, trajectories)


# --- loop state in checkpoints -------------------------------------------------------------------


def key_array(key: jax.Array) -> np.ndarray:
    return np.asarray(key)


def key_from_array(array: np.ndarray) -> jax.Array:
    return jax.numpy.asarray(array)


def encode_floats(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values for JSON that keep NaN and Inf apart from None ("not measured")."""
    return {
        k: repr(v) if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in values.items()
    }


def decode_floats(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, str) else v for k, v in values.items()}


def capture_env(env: Any, prefix: str, arrays: Arrays, capture: Callable = capture_env_state):
    """Add the env's state to ``arrays`` under ``prefix``; its JSON state, or the reason it cannot
    be saved."""
    try:
        env_arrays, info = capture(env)
    except EnvStateUnsupported as error:
        return {"unsupported": str(error)}
    arrays.update({f"{prefix}{name}": value for name, value in env_arrays.items()})
    return info


def restore_env(
    env: Any,
    prefix: str,
    arrays: Arrays,
    info: Mapping[str, Any],
    what: str,
    restore: Callable = restore_env_state,
) -> bool:
    """Put ``env`` into its saved state; False (with a one-line warning) if it was not saved."""
    if "unsupported" in info:
        warnings.warn(
            f"the {what}'s state was not saved ({info['unsupported']}); resume starts it afresh, "
            "so the resumed run is not bit-exact",
            InexactResumeWarning,
            stacklevel=2,
        )
        return False
    own = {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}
    restore(env, own, dict(info))
    return True


def fresh_seed(seed: int, env_step: int) -> int:
    """A seed for an env whose state could not be saved, drawn from the run's seed and step."""
    return int(np.random.SeedSequence([seed, env_step]).generate_state(1)[0])


def find_resume_point(
    setup: RunSetup,
    template: Any,
    check: Callable[[RunSetup, int], Any] | None = None,
) -> ResumePoint:
    """The newest checkpoint of the run that can be resumed: its meta, agent state (shaped like
    ``template``) and loop arrays read back intact, and ``check(setup, env_step)`` (the loop's
    own, e.g. the replay rows) passed. Damaged checkpoints are skipped with a one-line warning;
    newer ones and half-written temporaries are then removed, and ``config.json`` (with the
    resumed run's total steps) and ``status.json`` are written: nothing in the run directory
    changes until a checkpoint to resume from is found.

    Raises:
        UsageError: no checkpoint can be resumed.
    """
    return find_resume_points([setup], template, check)[0]


def replay_restorer(
    buffer_size: int, obs_dim: int, action_dim: int, improves_actions: bool = False
) -> Callable[[RunSetup, int], ReplayBuffer]:
    """The ``check`` of :func:`find_resume_points` for a loop with a replay buffer: reads a run's
    replay rows up to a checkpoint's env step, and calls rows that cannot be read a damaged
    checkpoint (so resume falls back to an older one)."""

    def restore(setup: RunSetup, env_step: int) -> ReplayBuffer:
        try:
            return ReplayBuffer.restore(
                setup.run_dir / runs.REPLAY_DIR,
                buffer_size,
                obs_dim,
                action_dim,
                env_step,
                improves_actions,
            )
        except ReplayDataError as error:
            raise checkpoint.DamagedCheckpoint(f"its replay rows are damaged ({error})") from None

    return restore


def find_resume_points(
    setups: Sequence[RunSetup],
    template: Any,
    check: Callable[[RunSetup, int], Any] | None = None,
) -> list[ResumePoint]:
    """:func:`find_resume_point` for the seeds of a run trained together: the newest step at
    which every seed holds an intact checkpoint (a kill can leave seeds a checkpoint apart).
    Nothing is removed or written until that step is found for all of them."""
    at_most: int | None = None
    while True:
        points = [_newest_resume_point(setup, template, check, at_most) for setup in setups]
        steps = {point.env_step for point in points}
        if len(steps) == 1:
            break
        at_most = min(steps)
    for setup, point in zip(setups, points, strict=True):
        _resume_from(setup, point)
    return points


def _newest_resume_point(
    setup: RunSetup,
    template: Any,
    check: Callable[[RunSetup, int], Any] | None,
    at_most: int | None,
) -> ResumePoint:
    def read(directory: Path) -> ResumePoint:
        meta = checkpoint.read_meta(directory)
        if meta.get("format") != checkpoint.FORMAT or not isinstance(meta.get("loop"), dict):
            raise checkpoint.DamagedCheckpoint("it was written without the state to resume from")
        state = checkpoint.restore(directory, template)
        arrays = checkpoint.read_loop_arrays(directory)
        extra = check(setup, meta["env_step"]) if check is not None else None
        return ResumePoint(directory, meta["env_step"], state, arrays, meta["loop"], extra)

    checkpoints = setup.run_dir / runs.CHECKPOINT_DIR
    _, point = checkpoint.newest_intact(checkpoints, read, setup.run_dir, at_most)
    if point.env_step > setup.config.steps:
        raise UsageError(
            f"the newest intact checkpoint of {str(setup.run_dir)!r} is at step "
            f"{point.env_step}, beyond --steps {setup.config.steps}"
        )
    return point


def _resume_from(setup: RunSetup, point: ResumePoint) -> None:
    checkpoints = setup.run_dir / runs.CHECKPOINT_DIR
    for newer in checkpoint.list_checkpoints(checkpoints):
        if checkpoint.step_of(newer) > point.env_step:
            checkpoint.remove(newer)
    checkpoint.remove_temporaries(checkpoints)
    runs.write_json(setup.run_dir / runs.CONFIG_FILE, setup.config.to_json(setup.env_spec))
    runs.write_status(setup.run_dir, "running", point.env_step, checkpoint=str(point.directory))


# --- the recorder --------------------------------------------------------------------------------


class Progress:
    """A terminal progress bar (tqdm) or, without a terminal, one line per evaluation."""

    def __init__(self, total: int, enabled: bool | None, description: str, initial: int) -> None:
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.quiet = enabled is False
        self.bar = None
        if self.interactive and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True
            )

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def report(
        self,
        step: int,
        total: int,
        eval_mean: float,
        steps_per_s: float,
        headline: str = "",
        label: str = "",
    ) -> None:
        """Show an evaluation; ``headline`` is the env's own summary (MultiGoal's goals),
        ``label`` names the seed when several train together."""
        if self.bar is not None:
            extra = {"eval": headline} if headline else {}
            seed = {"seed": label} if label else {}
            self.bar.set_postfix(**seed, eval_return=f"{eval_mean:.1f}", **extra, refresh=False)
        elif not self.quiet:
            remaining = (total - step) / max(steps_per_s, 1e-9)
            print(
                (f"seed {label}  " if label else "")
                + f"step {step}/{total}  eval_return {eval_mean:.1f}  "
                + (f"{headline}  " if headline else "")
                + f"{steps_per_s:.0f} steps/s  "
                f"ETA {datetime.timedelta(seconds=int(remaining))}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunRecorder:
    """Fills the run directory for a loop (see the module docstring).

    It owns the evaluation env (seeded ``seed + EVAL_SEED_OFFSET``, or restored from ``resume``),
    ``metrics.csv``, the checkpoints and ``status.json``; it reports evaluations on ``bar``
    (``label`` names the seed when several train together). A loop that evaluates on its own
    (the device loop: envs reset from the evaluation key, no state kept between evaluations)
    passes ``evaluate(state, key) -> Evaluation`` instead, and no evaluation env is made.
    """

    def __init__(
        self,
        setup: RunSetup,
        metric_names: list[str],
        total_steps: int,
        bar: Progress,
        resume: ResumePoint | None = None,
        label: str = "",
        evaluate: Callable[[Any, jax.Array], Evaluation] | None = None,
    ) -> None:
        config = setup.config
        self.config = config
        self.setup = setup
        self.env_spec = setup.env_spec
        self.run_dir = setup.run_dir
        self.checkpoints = self.run_dir / runs.CHECKPOINT_DIR
        self.report = env_report(config.env)
        report_names = list(self.report.summarize([])) if self.report else []
        columns = [
            "env_step",
            "wall_seconds",
            "eval_return_mean",
            "eval_return_std",
            "train_episode_return",
            "updates",
            *report_names,
            *metric_names,
        ]
        self.own_evaluate = evaluate
        self.eval_env = None if evaluate else config.make_env(config.seed + EVAL_SEED_OFFSET)
        rows: list[dict[str, Any]] = []
        wall_seconds = 0.0
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        if resume is not None:
            recorded = resume.info["recorder"]
            rows = [decode_floats(row) for row in recorded["rows"]]
            wall_seconds = float(recorded["wall_seconds"])
            if self.eval_env is not None and not restore_env(
                self.eval_env, "eval_env/", resume.arrays, recorded["eval_env"], "evaluation env"
            ):
                self.eval_env = config.make_env(fresh_seed(config.seed + EVAL_SEED_OFFSET, 0))
            self.last_checkpoint, self.last_checkpoint_step = resume.directory, resume.env_step
        self.log = runs.MetricsLog(self.run_dir / runs.METRICS_FILE, columns, rows)
        self.report_names = report_names
        self.trackers: list[Any] = []
        resumed_at = resume.env_step if resume is not None else None
        self.trackers.append(trackers.TensorBoard(self.run_dir, resumed_at))
        if setup.wandb:
            group = setup.group_dir.name if setup.group_dir is not None else None
            self.trackers.append(
                trackers.WandbRun(
                    self.run_dir, config.to_json(setup.env_spec), group, resume is not None
                )
            )
        self.total_steps = total_steps
        self.bar = bar
        self.label = label
        last = rows[-1] if rows else {}
        self.eval_mean = _float(last.get("eval_return_mean"))
        self.eval_std = _float(last.get("eval_return_std"))
        self.start = time.perf_counter() - wall_seconds

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.start

    # --- at every step ---

    def check_update(self, env_step: int, updates: int, metrics: Mapping[str, Any]) -> None:
        """Stop the run if an update's metric is NaN or Inf: a row with the metrics (``nan``
        written out), status ``diverged``, and :class:`TrainingDiverged`."""
        for name, value in metrics.items():
            if not math.isfinite(value):
                row = {"env_step": env_step, "wall_seconds": round(self.wall_seconds, 3)}
                self.log.append({**row, "updates": updates, **metrics})
                self._diverged(f"{name} ({value})", env_step)

    def interrupt(self, state: Any, env_step: int, snapshot: Snapshot) -> None:
        """SIGINT or SIGTERM arrived after this step: write a checkpoint at it (unless the step's
        evaluation point just did) and record ``interrupted``."""
        if self.last_checkpoint_step != env_step:
            self.checkpoint(state, env_step, snapshot)
        runs.write_status(
            self.run_dir, "interrupted", env_step, checkpoint=str(self.last_checkpoint)
        )

    # --- at an evaluation point ---

    def evaluation_point(
        self,
        agent: Any,
        state: Any,
        key: jax.Array,
        env_step: int,
        train_episode_return: float | None,
        updates: int,
        metrics: Mapping[str, float],
        snapshot: Snapshot,
    ) -> None:
        loop = self.config.loop
        if self.own_evaluate is not None:
            evaluation = self.own_evaluate(state, key)
        else:
            evaluation = evaluate(
                agent, state, self.eval_env, loop.eval_episodes, key, loop.eval_deterministic
            )
        self.eval_mean = float(evaluation.returns.mean())
        self.eval_std = float(evaluation.returns.std())
        row = {
            "env_step": env_step,
            "wall_seconds": round(self.wall_seconds, 3),
            "eval_return_mean": self.eval_mean,
            "eval_return_std": self.eval_std,
            "train_episode_return": train_episode_return,
            "updates": updates,
            **(self.report.summarize(evaluation.last_infos) if self.report else {}),
            **metrics,
        }
        self.log.append(row)
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            self._diverged(f"{bad[0]} ({row[bad[0]]})", env_step)
        self.checkpoint(state, env_step, snapshot)
        runs.plot_curve(
            self.log.rows,
            self.run_dir / runs.CURVE_FILE,
            f"{self.config.algo} on {self.config.env}",
        )
        elapsed = self.wall_seconds
        values = trackers.scalars(row, self.report_names, env_step / max(elapsed, 1e-9))
        for tracker in self.trackers:
            tracker.write(env_step, values)
        self.bar.report(
            env_step,
            self.total_steps,
            self.eval_mean,
            env_step / max(elapsed, 1e-9),
            self.headline(row),
            self.label,
        )

    def headline(self, row: Mapping[str, Any]) -> str:
        """The env's few words on an evaluation row (MultiGoal: goals reached), else ""."""
        if self.report is None or self.report.headline is None or not row:
            return ""
        return self.report.headline(dict(row))

    def checkpoint(self, state: Any, env_step: int, snapshot: Snapshot) -> Path:
        """Write a checkpoint of the agent, the loop and the envs at ``env_step`` (never one with a
        NaN or Inf parameter: that stops the run as diverged), then keep the newest
        ``checkpoint_keep``."""
        bad_leaf = checkpoint.non_finite_leaf(state)
        if bad_leaf is not None:
            self._diverged(f"parameter {bad_leaf}", env_step)
        arrays, loop_info = snapshot()
        recorder = {
            "rows": [encode_floats(row) for row in self.log.rows],
            "wall_seconds": self.wall_seconds,
            "eval_env": {}
            if self.eval_env is None
            else capture_env(self.eval_env, "eval_env/", arrays),
        }
        meta = {
            "env_step": env_step,
            "algo": self.config.algo,
            "config": self.config.to_json(self.env_spec),
            "loop": {**loop_info, "recorder": recorder},
        }
        directory = checkpoint.save(
            checkpoint.step_directory(self.checkpoints, env_step), state, meta, arrays
        )
        self.last_checkpoint, self.last_checkpoint_step = directory, env_step
        checkpoint.prune(self.checkpoints, self.config.loop.checkpoint_keep)
        runs.write_status(self.run_dir, "running", env_step, checkpoint=str(directory))
        return directory

    def oldest_kept_step(self) -> int:
        return min(checkpoint.step_of(p) for p in checkpoint.list_checkpoints(self.checkpoints))

    def _diverged(self, what: str, env_step: int) -> None:
        error = TrainingDiverged(what, self.run_dir, env_step, self.last_checkpoint)
        runs.write_status(self.run_dir, "diverged", env_step, message=str(error))
        raise error

    # --- at the end ---

    def finish(self, agent: Any, state: Any, key: jax.Array, env_step: int) -> TrainResult:
        """Write the report figure (if the env has one), ``summary.json`` and status
        ``complete``."""
        summary: dict[str, Any] = {
            "eval_return_mean": self.eval_mean,
            "eval_return_std": self.eval_std,
        }
        report = self.report
        if report is not None and report.plot_episodes > 0 and self.eval_env is not None:
            # The figure shows the policy's own samples (stochastic), as in the MaxEntDP paper.
            sampled = evaluate(agent, state, self.eval_env, report.plot_episodes, key, False, True)
            if report.plot is not None:
                with runs.atomic_path(self.run_dir / report.plot_file) as temporary:
                    report.plot(
                        sampled.trajectories,
                        str(temporary),
                        f"{self.config.algo}: {report.plot_episodes} sampled episodes "
                        f"after {env_step} steps",
                    )
            summary["stochastic_episodes"] = {
                "episodes": report.plot_episodes,
                "return_mean": float(sampled.returns.mean()),
                **report.summarize(sampled.last_infos),
            }
        runs.write_json(self.run_dir / runs.SUMMARY_FILE, summary)
        runs.write_status(self.run_dir, "complete", env_step, checkpoint=str(self.last_checkpoint))
        evaluated = [row for row in self.log.rows if row.get("eval_return_mean") is not None]
        headline = self.headline(evaluated[-1]) if evaluated else ""
        return TrainResult(
            self.run_dir, self.eval_mean, self.eval_std, self.log.rows, summary, headline
        )

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        if self.eval_env is not None:
            self.eval_env.close()


class SeedRecorders:
    """The recorders of the seeds a loop trains together (one, for a single run), with one
    progress display and one stop request.

    A seed whose update, evaluation or parameters turn non-finite stops as a diverged run (its
    directory says so, as a single run's would) while the others go on; the loop keeps computing
    it on the seed axis but nothing of it is recorded any more. When no seed is left, or at the
    end when some diverged, the divergence is raised (one seed: its own
    :class:`TrainingDiverged`, unchanged). ``evaluate``, if given, is each seed's
    :class:`RunRecorder` evaluation.
    """

    def __init__(
        self,
        setups: Sequence[RunSetup],
        metric_names: list[str],
        total_steps: int,
        resumes: Sequence[ResumePoint] | None,
        member: Callable[[Any, int], Any] = lambda packed, index: packed,
        evaluate: Callable[[Any, jax.Array], Evaluation] | None = None,
    ) -> None:
        first = setups[0]
        self.member = member  # seed index's part of a packed state or key
        config = first.config
        self.setups = list(setups)
        self.many = len(setups) > 1
        seeds = [setup.config.seed for setup in setups]
        description = f"{config.algo} {config.env}" + (
            f" seeds {','.join(map(str, seeds))}" if self.many else ""
        )
        initial = resumes[0].env_step if resumes else 0
        self.bar = Progress(total_steps, first.progress, description, initial)
        self.stop = first.stop
        self.recorders: list[RunRecorder] = []
        self.diverged: dict[int, TrainingDiverged] = {}
        try:
            for index, setup in enumerate(setups):
                self.recorders.append(
                    RunRecorder(
                        setup,
                        metric_names,
                        total_steps,
                        self.bar,
                        resumes[index] if resumes else None,
                        str(setup.config.seed) if self.many else "",
                        evaluate,
                    )
                )
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.recorders)

    def active(self, index: int) -> bool:
        """Whether seed ``index`` is still recorded (it has not diverged)."""
        return index not in self.diverged

    def _guarded(self, index: int, method: Callable[..., Any], *args: Any) -> Any:
        if not self.active(index):
            return None
        try:
            return method(*args)
        except TrainingDiverged as error:
            self.diverged[index] = error
            if len(self.diverged) == len(self.recorders):
                raise self._divergence() from None
            return None

    def _divergence(self) -> TrainingDiverged:
        if not self.many:
            return self.diverged[0]
        by_seed = {
            self.setups[index].config.seed: error for index, error in sorted(self.diverged.items())
        }
        group_dir = self.setups[0].group_dir or self.setups[0].run_dir.parent
        return SeedsDiverged(by_seed, group_dir, len(self.recorders) - len(self.diverged))

    def check_updates(
        self, env_step: int, updates: Sequence[int], metrics: Sequence[Mapping[str, Any]]
    ) -> None:
        """:meth:`RunRecorder.check_update` for every seed."""
        for index, recorder in enumerate(self.recorders):
            self._guarded(index, recorder.check_update, env_step, updates[index], metrics[index])

    def evaluation_points(
        self,
        agent: Any,
        state: Any,
        keys: jax.Array,
        env_step: int,
        train_episode_returns: Sequence[float | None],
        updates: Sequence[int],
        metrics: Sequence[Mapping[str, float]],
        snapshots: Sequence[Snapshot],
    ) -> None:
        """:meth:`RunRecorder.evaluation_point` of every seed still recorded, each with its part
        of the packed ``state`` and ``keys``."""
        for index, recorder in enumerate(self.recorders):
            self._guarded(
                index,
                recorder.evaluation_point,
                agent,
                self.member(state, index),
                self.member(keys, index),
                env_step,
                train_episode_returns[index],
                updates[index],
                metrics[index],
                snapshots[index],
            )

    def stop_if_requested(self, state: Any, env_step: int, snapshots: Sequence[Snapshot]) -> None:
        """After a step: if SIGINT or SIGTERM arrived, every seed writes a checkpoint at this
        step and records ``interrupted``, then :class:`TrainingInterrupted` is raised."""
        signum = self.stop.signum
        if signum is None:
            return
        for index, recorder in enumerate(self.recorders):
            member_state = self.member(state, index)
            self._guarded(index, recorder.interrupt, member_state, env_step, snapshots[index])
        if self.many:
            group_dir = self.setups[0].group_dir or self.setups[0].run_dir.parent
            raise TrainingInterrupted(signum, group_dir, env_step, None)
        recorder = self.recorders[0]
        raise TrainingInterrupted(signum, recorder.run_dir, env_step, recorder.last_checkpoint)

    def oldest_kept_step(self, index: int) -> int:
        return self.recorders[index].oldest_kept_step()

    def finish(self, agent: Any, state: Any, keys: jax.Array, env_step: int) -> list[TrainResult]:
        """:meth:`RunRecorder.finish` for every seed that did not diverge; then the divergence
        of the others, if any, is raised."""
        results = []
        for index, recorder in enumerate(self.recorders):
            if self.active(index):
                member_state, key = self.member(state, index), self.member(keys, index)
                results.append(recorder.finish(agent, member_state, key, env_step))
        if self.diverged:
            raise self._divergence()
        return results

    def close(self) -> None:
        self.bar.close()
        for recorder in self.recorders:
            recorder.close()


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
