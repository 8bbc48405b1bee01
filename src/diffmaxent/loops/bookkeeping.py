"""What every training loop shares: the resolved config of a run, evaluation, the progress
display, the recorder that fills the run directory, and the result a loop returns.

A loop (:mod:`diffmaxent.loops.replay`, :mod:`diffmaxent.loops.rollout`) only trains; at its
evaluation points it hands the agent state to :class:`RunRecorder`, which evaluates on a separate
env, appends a row to ``metrics.csv``, writes a checkpoint and redraws ``curve.png``, and at the
end writes the env's report figure and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent import checkpoint, runs
from diffmaxent.config import hp, to_json_dict
from diffmaxent.envs import env_report
from diffmaxent.envs.factory import EnvSpec, RescaledEnv, make_env

EVAL_SEED_OFFSET = 10_000  # the evaluation env's seed is seed + this, so it never replays training


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSchedule:
    """Loop settings every loop has: when and how to evaluate and checkpoint, and the action
    repeat of its envs."""

    eval_every: int = hp(2_000, "env steps between evaluations and checkpoints", low=1)
    eval_episodes: int = hp(10, "episodes per evaluation", low=1)
    eval_deterministic: bool = hp(True, "evaluate the policy's deterministic action")
    checkpoint_keep: int = hp(3, "checkpoints kept (newest)", low=1)
    action_repeat: int = hp(1, "env steps per agent action, rewards summed (DMC)", low=1)


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


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a loop is given besides the agent: the config, the env's description, where to write
    and how to show progress (True: a bar, False: silence, None: a bar on a terminal and one line
    per evaluation otherwise)."""

    config: ResolvedConfig
    env_spec: EnvSpec
    run_dir: Path
    progress: bool | None


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    eval_return_mean: float
    eval_return_std: float
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


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


class Progress:
    """A terminal progress bar (tqdm) or, without a terminal, one line per evaluation."""

    def __init__(self, total: int, enabled: bool | None, description: str) -> None:
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.quiet = enabled is False
        self.bar = None
        if self.interactive and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def report(self, step: int, total: int, eval_mean: float, steps_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(eval_return=f"{eval_mean:.1f}", refresh=False)
        elif not self.quiet:
            remaining = (total - step) / max(steps_per_s, 1e-9)
            print(
                f"step {step}/{total}  eval_return {eval_mean:.1f}  {steps_per_s:.0f} steps/s  "
                f"ETA {datetime.timedelta(seconds=int(remaining))}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunRecorder:
    """What every loop does at an evaluation point (evaluate, append a metrics row, save a
    checkpoint, redraw the curve) and at the end (the env's report figure and ``summary.json``).

    It owns the evaluation env (seeded ``seed + EVAL_SEED_OFFSET``) and the progress display.
    """

    def __init__(self, setup: RunSetup, metric_names: list[str], total_steps: int) -> None:
        config = setup.config
        self.config = config
        self.env_spec = setup.env_spec
        self.run_dir = setup.run_dir
        self.eval_env = config.make_env(config.seed + EVAL_SEED_OFFSET)
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
        self.log = runs.MetricsLog(self.run_dir / runs.METRICS_FILE, columns)
        self.total_steps = total_steps
        self.bar = Progress(total_steps, setup.progress, f"{config.algo} {config.env}")
        self.eval_mean = self.eval_std = math.nan
        self.start = time.perf_counter()

    def evaluation_point(
        self,
        agent: Any,
        state: Any,
        key: jax.Array,
        env_step: int,
        train_episode_return: float,
        updates: int,
        metrics: Mapping[str, Any],
    ) -> None:
        loop = self.config.loop
        evaluation = evaluate(
            agent, state, self.eval_env, loop.eval_episodes, key, loop.eval_deterministic
        )
        self.eval_mean = float(evaluation.returns.mean())
        self.eval_std = float(evaluation.returns.std())
        elapsed = time.perf_counter() - self.start
        self.log.append(
            {
                "env_step": env_step,
                "wall_seconds": round(elapsed, 3),
                "eval_return_mean": self.eval_mean,
                "eval_return_std": self.eval_std,
                "train_episode_return": train_episode_return,
                "updates": updates,
                **(self.report.summarize(evaluation.last_infos) if self.report else {}),
                **{name: float(value) for name, value in metrics.items()},
            }
        )
        checkpoints = self.run_dir / runs.CHECKPOINT_DIR
        checkpoint.save(
            checkpoint.step_directory(checkpoints, env_step),
            state,
            {
                "env_step": env_step,
                "algo": self.config.algo,
                "config": self.config.to_json(self.env_spec),
            },
        )
        checkpoint.prune(checkpoints, loop.checkpoint_keep)
        runs.plot_curve(
            self.log.rows,
            self.run_dir / runs.CURVE_FILE,
            f"{self.config.algo} on {self.config.env}",
        )
        self.bar.report(env_step, self.total_steps, self.eval_mean, env_step / max(elapsed, 1e-9))

    def finish(self, agent: Any, state: Any, key: jax.Array, env_step: int) -> TrainResult:
        """Write the report figure (if the env has one) and ``summary.json``."""
        summary: dict[str, Any] = {
            "eval_return_mean": self.eval_mean,
            "eval_return_std": self.eval_std,
        }
        report = self.report
        if report is not None and report.plot_episodes > 0:
            # The figure shows the policy's own samples (stochastic), as in the MaxEntDP paper.
            sampled = evaluate(agent, state, self.eval_env, report.plot_episodes, key, False, True)
            if report.plot is not None:
                report.plot(
                    sampled.trajectories,
                    str(self.run_dir / report.plot_file),
                    f"{self.config.algo}: {report.plot_episodes} sampled episodes "
                    f"after {env_step} steps",
                )
            summary["stochastic_episodes"] = {
                "episodes": report.plot_episodes,
                "return_mean": float(sampled.returns.mean()),
                **report.summarize(sampled.last_infos),
            }
        runs.write_json(self.run_dir / runs.SUMMARY_FILE, summary)
        return TrainResult(self.run_dir, self.eval_mean, self.eval_std, self.log.rows, summary)

    def close(self) -> None:
        self.bar.close()
        self.eval_env.close()
