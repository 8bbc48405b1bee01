"""The rollout loop of on-policy agents (PPO, DiffPPO).

``num_envs`` environments in a :class:`gymnasium.vector.SyncVectorEnv` (synchronous: on a
2-core machine subprocesses only add IPC) -> ``rollout_steps`` vector steps, each one jitted
``collect`` call for all envs (for diffusion agents this runs all K denoising steps in-graph) ->
one jitted ``update`` on the whole rollout -> an evaluation point of the
:class:`~diffmaxent.loops.bookkeeping.RunRecorder` whenever a multiple of ``eval_every`` env steps
has been passed.

Training runs whole rollouts: ``ceil(steps / (num_envs * rollout_steps))`` of them, so the last
logged ``env_step`` can exceed ``steps`` by less than one rollout.

Episodes that end inside a rollout are reset at once (Gymnasium's same-step autoreset); the
real final observation is kept as ``next_obs`` so that a time-limit truncation bootstraps from
it while a termination does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.agents.onpolicy import OnPolicyAgent, Rollout, example_rollout
from diffmaxent.config import hp, with_defaults
from diffmaxent.envs.factory import make_env
from diffmaxent.envs.snapshot import capture_vector_env_state, restore_vector_env_state
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
class RolloutLoopConfig(with_defaults(EvaluationSchedule, eval_every=10_000)):
    """Settings of the rollout loop shared by PPO-style agents (their learning settings,
    including ``batch_size``, ``epochs`` and the GAE parameters, are agent hyperparameters
    because the agent's jitted ``update`` consumes them)."""

    num_envs: int = hp(8, "environments stepped together (gymnasium SyncVectorEnv)", low=1)
    rollout_steps: int = hp(256, "env steps per environment between updates", low=1)


def make_vector_env(
    env_id: str, num_envs: int, seed: int, action_repeat: int = 1
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of :func:`make_env` (env ``i`` seeded ``seed + i``) with same-step
    autoreset: the returned observation after an episode end is the reset one and
    ``info["final_obs"]`` holds the real last one."""
    return gym.vector.SyncVectorEnv(
        [
            lambda i=i: make_env(env_id, seed=seed + i, action_repeat=action_repeat)
            for i in range(num_envs)
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


class EpisodeTracker:
    """Running returns of the training envs; ``last`` is the most recent finished episode's
    (None before the first)."""

    def __init__(self, num_envs: int) -> None:
        self.running = np.zeros(num_envs)
        self.last: float | None = None
        self.finished = 0

    def add(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.running += reward
        for i in np.flatnonzero(done):
            self.last = float(self.running[i])
            self.running[i] = 0.0
            self.finished += 1


def collect_rollout(
    agent: OnPolicyAgent,
    state: Any,
    envs: gym.vector.VectorEnv,
    obs: np.ndarray,
    key: jax.Array,
    num_steps: int,
    tracker: EpisodeTracker | None = None,
) -> tuple[Rollout, np.ndarray, jax.Array]:
    """Step ``envs`` ``num_steps`` times from ``obs [B, obs_dim]`` with ``agent.collect``.

    Returns:
        ``(rollout, the observation to continue from, the advanced key)``.
    """
    obs_list, extras_list, rewards, next_obs_list, terminated_list, truncated_list = (
        [],
        [],
        [],
        [],
        [],
        [],
    )
    for _ in range(num_steps):
        key, step_key = jax.random.split(key)
        action, extras = agent.collect(state, obs, step_key)
        next_obs, reward, terminated, truncated, info = envs.step(np.asarray(action))
        real_next = np.array(next_obs, dtype=np.float32, copy=True)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                real_next[i] = info["final_obs"][i]
        obs_list.append(obs)
        extras_list.append(extras)
        rewards.append(reward)
        next_obs_list.append(real_next)
        terminated_list.append(terminated)
        truncated_list.append(truncated)
        if tracker is not None:
            tracker.add(np.asarray(reward, np.float64), np.logical_or(terminated, truncated))
        obs = np.asarray(next_obs, np.float32)
    rollout = Rollout(
        obs=np.stack(obs_list).astype(np.float32),
        extras=jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *extras_list),
        reward=np.stack(rewards).astype(np.float32),
        next_obs=np.stack(next_obs_list),
        terminated=np.stack(terminated_list).astype(np.float32),
        truncated=np.stack(truncated_list).astype(np.float32),
    )
    return rollout, obs, key


def run(setup: RunSetup, agent: OnPolicyAgent) -> TrainResult:
    """Train ``agent`` for ``setup.config.steps`` env steps (whole rollouts) and fill the run
    directory. A step of this loop is one rollout and its update: evaluation points, checkpoints
    and stops on a signal fall between them."""
    config = setup.config
    loop = config.loop
    key, init_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = agent.init(init_key)
    steps_per_rollout = loop.num_envs * loop.rollout_steps
    iterations = -(-config.steps // steps_per_rollout)
    example = example_rollout(
        agent, state, setup.env_spec.obs_dim, loop.rollout_steps, loop.num_envs
    )
    metric_names = sorted(jax.eval_shape(agent.update, state, example, key)[1])
    resume = find_resume_point(setup, state) if setup.resume else None
    recorder = RunRecorder(setup, metric_names, iterations * steps_per_rollout, resume)
    envs = make_vector_env(config.env, loop.num_envs, config.seed, loop.action_repeat)
    tracker = EpisodeTracker(loop.num_envs)
    metrics: dict[str, float] = {}
    iteration = 0
    try:
        if resume is None:
            obs = np.asarray(envs.reset()[0], np.float32)
        else:
            state, info, iteration = resume.state, resume.info, resume.info["iteration"]
            key, obs = key_from_array(resume.arrays["key"]), resume.arrays["obs"]
            tracker.running = resume.arrays["episode_returns"]
            tracker.last, tracker.finished = info["last_episode_return"], info["episodes"]
            metrics = decode_floats(info["metrics"])
            if not restore_env(
                envs,
                "envs/",
                resume.arrays,
                info["envs"],
                "training envs",
                restore_vector_env_state,
            ):
                envs.close()
                seed = fresh_seed(config.seed, resume.env_step)
                envs = make_vector_env(config.env, loop.num_envs, seed, loop.action_repeat)
                obs = np.asarray(envs.reset()[0], np.float32)
                tracker.running[:] = 0.0

        def snapshot() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            arrays = {
                "key": key_array(key),
                "obs": np.asarray(obs),
                "episode_returns": tracker.running.copy(),
            }
            info = {
                "iteration": iteration,
                "last_episode_return": tracker.last,
                "episodes": tracker.finished,
                "metrics": encode_floats(metrics),
                "envs": capture_env(envs, "envs/", arrays, capture_vector_env_state),
            }
            return arrays, info

        env_step = iteration * steps_per_rollout
        while iteration < iterations:
            iteration += 1
            rollout, obs, key = collect_rollout(
                agent, state, envs, obs, key, loop.rollout_steps, tracker
            )
            key, update_key = jax.random.split(key)
            state, update_metrics = agent.update(state, rollout, update_key)
            metrics = {k: float(v) for k, v in jax.device_get(update_metrics).items()}
            env_step = iteration * steps_per_rollout
            recorder.check_update(env_step, iteration, metrics)
            recorder.bar.advance(steps_per_rollout)
            passed_eval = env_step // loop.eval_every > (env_step - steps_per_rollout) // (
                loop.eval_every
            )
            if passed_eval or iteration == iterations:
                key, eval_key = jax.random.split(key)
                recorder.evaluation_point(
                    agent, state, eval_key, env_step, tracker.last, iteration, metrics, snapshot
                )
            recorder.stop_if_requested(state, env_step, snapshot)
        _, plot_key = jax.random.split(key)
        return recorder.finish(agent, state, plot_key, env_step)
    finally:
        recorder.close()
        envs.close()
