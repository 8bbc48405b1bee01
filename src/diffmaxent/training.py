"""The off-policy training loop every replay-based agent uses, and config resolution.

random warm-up -> (act, step env, store) -> sample ``updates_per_step`` batches -> one jitted
``update`` (a ``lax.scan`` over them) -> every ``eval_every`` steps: evaluate on a separate env
instance, log a row of ``metrics.csv``, checkpoint, redraw ``curve.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent import checkpoint, runs
from diffmaxent.agents import AlgoSpec, get_algo
from diffmaxent.agents.common import Agent
from diffmaxent.buffer import ReplayBuffer, zeros_batch
from diffmaxent.config import (
    describe_fields,
    field_types,
    hp,
    preset_values,
    replace_validated,
    to_json_dict,
)
from diffmaxent.envs import env_report, env_suite
from diffmaxent.envs.factory import EnvSpec, RescaledEnv, make_env
from diffmaxent.errors import PresetSuiteWarning, UsageError
from diffmaxent.onpolicy import OnPolicyLoopConfig, on_policy_loop

# `diffmaxent train` with no arguments: MaxEntDP on the multi-goal task of the paper's Fig. 1.
DEFAULT_ALGO = "maxentdp"
DEFAULT_ENV = "MultiGoal-v0"
DEFAULT_STEPS = 6_000
DEFAULT_PRESET = "cpu"
EVAL_SEED_OFFSET = 10_000  # the evaluation env's seed is seed + this, so it never replays training


@dataclasses.dataclass(frozen=True)
class OffPolicyLoopConfig:
    """Settings of the off-policy loop shared by all replay-based agents."""

    batch_size: int = hp(256, "transitions per gradient step", low=1)
    buffer_size: int = hp(1_000_000, "replay capacity (oldest overwritten first)", low=1)
    learning_starts: int = hp(5_000, "env steps of uniform random actions before updates", low=0)
    updates_per_step: int = hp(1, "gradient steps per env step (one jitted scan)", low=1)
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
    loop: OffPolicyLoopConfig | OnPolicyLoopConfig

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


def loop_config_class(spec: AlgoSpec) -> type:
    """The loop settings an algorithm uses: replay-based or on-policy (``spec.loop``)."""
    return OnPolicyLoopConfig if spec.loop == "on_policy" else OffPolicyLoopConfig


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def resolve_config(
    algo: str = DEFAULT_ALGO,
    env: str = DEFAULT_ENV,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Apply preset then overrides to the agent and loop configs, validating every name and value.

    Raises:
        UsageError: unknown algo, preset or hyperparameter, or a bad value.
    """
    spec = get_algo(algo)
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    values = {**preset_values(spec.presets, preset, env), **dict(overrides or {})}
    warn_if_wrong_suite(spec, preset, env)
    agent_names = set(field_types(spec.config_cls))
    loop_cls = loop_config_class(spec)
    loop_names = set(field_types(loop_cls))
    unknown = sorted(set(values) - agent_names - loop_names)
    if unknown:
        accepted = ", ".join(sorted(agent_names | loop_names))
        raise UsageError(f"unknown hyperparameter {unknown[0]!r} for {algo}; accepted: {accepted}")
    agent_config = replace_validated(
        spec.config_cls(), {k: v for k, v in values.items() if k in agent_names}
    )
    loop_config = replace_validated(
        loop_cls(), {k: v for k, v in values.items() if k in loop_names}
    )
    return ResolvedConfig(algo, env, preset, seed, steps, agent_config, loop_config)


def warn_if_wrong_suite(spec: AlgoSpec, preset: str, env: str) -> None:
    """Warn (:class:`PresetSuiteWarning`) when ``preset`` was tuned on another suite than env's."""
    suite, env_is = spec.preset_suites.get(preset), env_suite(env)
    if suite is not None and suite != env_is:
        others = [name for name, s in spec.preset_suites.items() if s == env_is]
        hint = f"; for {env_is} envs use {' or '.join(others)}" if others else ""
        warnings.warn(
            f"preset {preset!r} of {spec.name} holds {suite} settings, but {env} is a "
            f"{env_is} env{hint}",
            PresetSuiteWarning,
            stacklevel=3,
        )


def config_from_json(data: Mapping[str, Any]) -> ResolvedConfig:
    """Rebuild a :class:`ResolvedConfig` from ``config.json``."""
    spec = get_algo(data["algo"])
    return ResolvedConfig(
        algo=data["algo"],
        env=data["env"],
        preset=data["preset"],
        seed=data["seed"],
        steps=data["steps"],
        agent=replace_validated(spec.config_cls(), data["agent"]),
        loop=replace_validated(loop_config_class(spec)(), data["loop"]),
    )


def hyperparameter_table(algo: str) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` for every hyperparameter of ``algo`` (agent, then loop)."""
    spec = get_algo(algo)
    return describe_fields(spec.config_cls) + describe_fields(loop_config_class(spec))


def default_run_directory(algo: str, env: str, seed: int) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_env = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
    return Path("runs") / f"{algo}-{safe_env}-seed{seed}-{stamp}"


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
    agent: Agent,
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


class _Progress:
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
    """What both training loops do at an evaluation point (evaluate, append a metrics row, save a
    checkpoint, redraw the curve) and at the end (the env's report figure and ``summary.json``)."""

    def __init__(
        self,
        config: ResolvedConfig,
        env_spec: EnvSpec,
        eval_env: RescaledEnv,
        run_dir: Path,
        metric_names: list[str],
        total_steps: int,
        progress: bool | None,
    ) -> None:
        self.config = config
        self.env_spec = env_spec
        self.eval_env = eval_env
        self.run_dir = run_dir
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
        self.log = runs.MetricsLog(run_dir / runs.METRICS_FILE, columns)
        self.total_steps = total_steps
        self.bar = _Progress(total_steps, progress, f"{config.algo} {config.env}")
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


def train(
    algo: str = DEFAULT_ALGO,
    env: str = DEFAULT_ENV,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    out: str | Path | None = None,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``algo`` on ``env`` and write a run directory (mirrors ``diffmaxent train``).

    Args:
        algo: a name from ``diffmaxent.ALGOS``.
        env: a Gymnasium id (``MultiGoal-v0``, ``Pendulum-v1``, ``module:Env-v0``, ...).
        steps: env steps to train for.
        seed: seeds the agent, the envs and the replay sampling.
        out: run directory; default ``runs/<algo>-<env>-seed<seed>-<timestamp>``.
        preset: a preset name of ``algo`` (``diffmaxent presets ALGO`` lists them).
        overrides: hyperparameter values applied after the preset (numbers or strings).
        force: replace a run already in ``out`` (other files there are kept).
        progress: True for a progress bar, False for silence, None for a bar on a terminal and
            one line per evaluation otherwise.

    Returns:
        The run directory, the final evaluation and all metric rows.

    Raises:
        UsageError: for any bad input; nothing is written in that case.
    """
    config = resolve_config(algo, env, steps=steps, seed=seed, preset=preset, overrides=overrides)
    run_dir = Path(out) if out is not None else default_run_directory(algo, env, seed)
    runs.check_output_directory(run_dir, force)
    train_env = config.make_env(seed)
    eval_env = config.make_env(seed + EVAL_SEED_OFFSET)
    spec = get_algo(algo)
    agent = spec.make(config.agent, train_env.env_spec)

    runs.prepare_output_directory(run_dir, force)
    runs.write_json(run_dir / runs.CONFIG_FILE, config.to_json(train_env.env_spec))
    try:
        if spec.loop == "on_policy":
            # The loop makes its own vector of training envs; train_env gave the env spec.
            return on_policy_loop(config, agent, train_env.env_spec, eval_env, run_dir, progress)
        return _off_policy_loop(config, spec, agent, train_env, eval_env, run_dir, progress)
    finally:
        train_env.close()
        eval_env.close()


def _off_policy_loop(
    config: ResolvedConfig,
    spec: AlgoSpec,
    agent: Agent,
    env: RescaledEnv,
    eval_env: RescaledEnv,
    run_dir: Path,
    progress: bool | None,
) -> TrainResult:
    loop = config.loop
    env_spec = env.env_spec
    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    key, init_key = jax.random.split(key)
    state = agent.init(init_key)
    buffer = ReplayBuffer(
        min(loop.buffer_size, config.steps), env_spec.obs_dim, env_spec.action_dim
    )

    example = zeros_batch(
        env_spec.obs_dim, env_spec.action_dim, loop.batch_size, loop.updates_per_step
    )
    metric_names = sorted(jax.eval_shape(agent.update, state, example, key)[1])
    recorder = RunRecorder(
        config, env_spec, eval_env, run_dir, metric_names, config.steps, progress
    )
    metrics: dict[str, Any] = {}
    last_episode_return = math.nan
    episode_return = 0.0
    num_updates = 0
    obs, _ = env.reset()
    try:
        for step in range(1, config.steps + 1):
            if step <= loop.learning_starts:
                action = rng.uniform(-1.0, 1.0, size=env_spec.action_dim).astype(np.float32)
            else:
                key, act_key = jax.random.split(key)
                action = np.asarray(agent.act(state, obs[None], act_key, False))[0]
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated, truncated)
            episode_return += reward
            obs = next_obs
            if terminated or truncated:
                last_episode_return, episode_return = episode_return, 0.0
                obs, _ = env.reset()

            if step >= loop.learning_starts:
                batches = buffer.sample(rng, loop.batch_size, loop.updates_per_step)
                key, update_key = jax.random.split(key)
                state, metrics = agent.update(state, batches, update_key)
                num_updates += loop.updates_per_step
            recorder.bar.advance()

            if step % loop.eval_every == 0 or step == config.steps:
                key, eval_key = jax.random.split(key)
                recorder.evaluation_point(
                    agent, state, eval_key, step, last_episode_return, num_updates, metrics
                )
    finally:
        recorder.bar.close()
    key, plot_key = jax.random.split(key)
    return recorder.finish(agent, state, plot_key, config.steps)
