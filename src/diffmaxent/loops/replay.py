"""The replay loop of off-policy agents (SAC, MaxEntDP, DIME, CrossQ, DiffSAC, DiffWPO).

random warm-up -> (act, step env, store) -> sample ``updates_per_step`` batches -> one jitted
``update`` (a ``lax.scan`` over them) -> every ``eval_every`` steps an evaluation point of the
:class:`~diffmaxent.loops.bookkeeping.RunRecorder`.

The replay buffer is checkpointed incrementally: each checkpoint writes only the transitions added
since the previous one into ``RUN_DIR/replay`` (:meth:`ReplayBuffer.save_rows`), and chunks no kept
checkpoint needs are deleted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from diffmaxent import runs
from diffmaxent.agents.common import Agent
from diffmaxent.buffer import (
    ReplayBuffer,
    ReplayDataError,
    discard_rows_after,
    prune_rows,
    zeros_batch,
)
from diffmaxent.checkpoint import DamagedCheckpoint
from diffmaxent.config import hp
from diffmaxent.envs.snapshot import generator_from_state, generator_state
from diffmaxent.loops.bookkeeping import (
    EvaluationSchedule,
    RunRecorder,
    RunSetup,
    TrainResult,
    capture_env,
    decode_floats,
    encode_floats,
    find_resume_point,
    fresh_seed,
    key_array,
    key_from_array,
    restore_env,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayLoopConfig(EvaluationSchedule):
    """Settings of the replay loop shared by all off-policy agents."""

    batch_size: int = hp(256, "transitions per gradient step", low=1)
    buffer_size: int = hp(1_000_000, "replay capacity (oldest overwritten first)", low=1)
    learning_starts: int = hp(5_000, "env steps of uniform random actions before updates", low=0)
    updates_per_step: int = hp(1, "gradient steps per env step (one jitted scan)", low=1)


@dataclasses.dataclass
class ReplayState:
    """Everything the loop's future depends on besides the agent, the buffer and the envs."""

    env_step: int  # env steps taken (= transitions ever stored)
    obs: np.ndarray  # [obs_dim], the observation to act on next
    episode_return: float  # of the episode in progress
    last_episode_return: float | None  # of the last finished one; None before the first
    updates: int
    key: jax.Array
    rng: np.random.Generator  # warm-up actions and replay sampling
    metrics: dict[str, float]  # of the last update
    rows_saved: int  # transitions already written to the replay directory


def run(setup: RunSetup, agent: Agent) -> TrainResult:
    """Train ``agent`` up to ``setup.config.steps`` env steps and fill the run directory."""
    config = setup.config
    loop = config.loop
    env_spec = setup.env_spec
    replay_dir = setup.run_dir / runs.REPLAY_DIR
    env = config.make_env(config.seed)
    key, init_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = agent.init(init_key)
    example = zeros_batch(
        env_spec.obs_dim, env_spec.action_dim, loop.batch_size, loop.updates_per_step
    )
    metric_names = sorted(jax.eval_shape(agent.update, state, example, key)[1])

    def restore_buffer(directory: Any, env_step: int) -> ReplayBuffer:
        try:
            return ReplayBuffer.restore(
                replay_dir, loop.buffer_size, env_spec.obs_dim, env_spec.action_dim, env_step
            )
        except ReplayDataError as error:
            raise DamagedCheckpoint(f"its replay rows are damaged ({error})") from None

    resume = find_resume_point(setup, state, restore_buffer) if setup.resume else None
    recorder = RunRecorder(setup, metric_names, config.steps, resume)
    try:
        if resume is None:
            buffer = ReplayBuffer(loop.buffer_size, env_spec.obs_dim, env_spec.action_dim)
            obs, _ = env.reset()
            progress = ReplayState(
                0, obs, 0.0, None, 0, key, np.random.default_rng(config.seed), {}, 0
            )
        else:
            state, buffer, info = resume.state, resume.extra, resume.info
            discard_rows_after(replay_dir, resume.env_step)
            progress = ReplayState(
                env_step=resume.env_step,
                obs=resume.arrays["obs"],
                episode_return=info["episode_return"],
                last_episode_return=info["last_episode_return"],
                updates=info["updates"],
                key=key_from_array(resume.arrays["key"]),
                rng=generator_from_state(info["rng"]),
                metrics=decode_floats(info["metrics"]),
                rows_saved=resume.env_step,
            )
            if not restore_env(env, "env/", resume.arrays, info["env"], "training env"):
                env = config.make_env(fresh_seed(config.seed, resume.env_step))
                progress.obs, progress.episode_return = env.reset()[0], 0.0

        def snapshot() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            buffer.save_rows(replay_dir, progress.rows_saved)
            progress.rows_saved = buffer.inserted
            arrays = {"key": key_array(progress.key), "obs": np.asarray(progress.obs)}
            info = {
                "episode_return": progress.episode_return,
                "last_episode_return": progress.last_episode_return,
                "updates": progress.updates,
                "rng": generator_state(progress.rng),
                "metrics": encode_floats(progress.metrics),
                "env": capture_env(env, "env/", arrays),
            }
            return arrays, info

        for step in range(progress.env_step + 1, config.steps + 1):
            _step(agent, state, env, buffer, progress, loop, env_spec.action_dim)
            if step >= loop.learning_starts:
                batches = buffer.sample(progress.rng, loop.batch_size, loop.updates_per_step)
                progress.key, update_key = jax.random.split(progress.key)
                state, metrics = agent.update(state, batches, update_key)
                progress.updates += loop.updates_per_step
                progress.metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                recorder.check_update(step, progress.updates, progress.metrics)
            progress.env_step = step
            recorder.bar.advance()

            if step % loop.eval_every == 0 or step == config.steps:
                progress.key, eval_key = jax.random.split(progress.key)
                recorder.evaluation_point(
                    agent,
                    state,
                    eval_key,
                    step,
                    progress.last_episode_return,
                    progress.updates,
                    progress.metrics,
                    snapshot,
                )
                prune_rows(replay_dir, recorder.oldest_kept_step() - buffer.capacity)
            recorder.stop_if_requested(state, step, snapshot)
        _, plot_key = jax.random.split(progress.key)
        return recorder.finish(agent, state, plot_key, progress.env_step)
    finally:
        recorder.close()
        env.close()


def _step(agent, state, env, buffer, progress: ReplayState, loop, action_dim: int) -> None:
    """Act (uniformly at random during warm-up), step the env, store the transition."""
    if progress.env_step + 1 <= loop.learning_starts:
        action = progress.rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32)
    else:
        progress.key, act_key = jax.random.split(progress.key)
        action = np.asarray(agent.act(state, progress.obs[None], act_key, False))[0]
    next_obs, reward, terminated, truncated, _ = env.step(action)
    buffer.add(progress.obs, action, reward, next_obs, terminated, truncated)
    progress.episode_return += reward
    progress.obs = next_obs
    if terminated or truncated:
        progress.last_episode_return, progress.episode_return = progress.episode_return, 0.0
        progress.obs, _ = env.reset()
