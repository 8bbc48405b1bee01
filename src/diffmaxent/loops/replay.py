"""The replay loop of off-policy agents (SAC, MaxEntDP, DIME, CrossQ, DiffSAC, DiffWPO).

random warm-up -> (act, step env, store) -> sample ``updates_per_step`` batches -> one jitted
``update`` (a ``lax.scan`` over them) -> every ``eval_every`` steps an evaluation point of the
:class:`~diffmaxent.loops.bookkeeping.RunRecorder`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from diffmaxent.agents.common import Agent
from diffmaxent.buffer import ReplayBuffer, zeros_batch
from diffmaxent.config import hp
from diffmaxent.loops.bookkeeping import EvaluationSchedule, RunRecorder, RunSetup, TrainResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayLoopConfig(EvaluationSchedule):
    """Settings of the replay loop shared by all off-policy agents."""

    batch_size: int = hp(256, "transitions per gradient step", low=1)
    buffer_size: int = hp(1_000_000, "replay capacity (oldest overwritten first)", low=1)
    learning_starts: int = hp(5_000, "env steps of uniform random actions before updates", low=0)
    updates_per_step: int = hp(1, "gradient steps per env step (one jitted scan)", low=1)


def run(setup: RunSetup, agent: Agent) -> TrainResult:
    """Train ``agent`` for ``setup.config.steps`` env steps and fill the run directory."""
    config = setup.config
    loop = config.loop
    env_spec = setup.env_spec
    env = config.make_env(config.seed)
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
    recorder = RunRecorder(setup, metric_names, config.steps)
    metrics: dict[str, Any] = {}
    last_episode_return = math.nan
    episode_return = 0.0
    num_updates = 0
    try:
        obs, _ = env.reset()
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
        key, plot_key = jax.random.split(key)
        return recorder.finish(agent, state, plot_key, config.steps)
    finally:
        recorder.close()
        env.close()
