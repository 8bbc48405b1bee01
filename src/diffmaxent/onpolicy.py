"""The on-policy training loop (PPO and DiffPPO) and the pieces on-policy agents share.

Loop: ``num_envs`` environments in a :class:`gymnasium.vector.SyncVectorEnv` (synchronous: on a
2-core machine subprocesses only add IPC) -> ``rollout_steps`` vector steps, each one jitted
``collect`` call for all envs (for diffusion agents this runs all K denoising steps in-graph) ->
one jitted ``update`` on the whole rollout (the agent computes values, GAE over augmented steps
and its minibatch epochs inside it) -> evaluation, ``metrics.csv`` row, checkpoint and
``curve.png`` whenever a multiple of ``eval_every`` env steps has been passed. The run directory
is the off-policy loop's (:mod:`diffmaxent.training`), so ``diffmaxent eval`` and
``diffmaxent.load`` work the same.

Training runs whole rollouts: ``ceil(steps / (num_envs * rollout_steps))`` of them, so the last
logged ``env_step`` can exceed ``steps`` by less than one rollout.

Episodes that end inside a rollout are reset at once (Gymnasium's same-step autoreset); the
real final observation is kept as ``next_obs`` so that a time-limit truncation bootstraps from
it while a termination does not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffmaxent.config import hp
from diffmaxent.envs.factory import EnvSpec, make_env

if TYPE_CHECKING:
    from diffmaxent.training import ResolvedConfig, TrainResult

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class OnPolicyLoopConfig:
    """Settings of the on-policy loop shared by PPO-style agents (their learning settings,
    including ``batch_size``, ``epochs`` and the GAE parameters, are agent hyperparameters
    because the agent's jitted ``update`` consumes them)."""

    num_envs: int = hp(8, "environments stepped together (gymnasium SyncVectorEnv)", low=1)
    rollout_steps: int = hp(256, "env steps per environment between updates", low=1)
    eval_every: int = hp(10_000, "env steps between evaluations and checkpoints", low=1)
    eval_episodes: int = hp(10, "episodes per evaluation", low=1)
    eval_deterministic: bool = hp(True, "evaluate the policy's deterministic action")
    checkpoint_keep: int = hp(3, "checkpoints kept (newest)", low=1)
    action_repeat: int = hp(1, "env steps per agent action, rewards summed (DMC)", low=1)


class Rollout(NamedTuple):
    """``T`` vector steps of ``B`` envs, leading shape ``[T, B]``; observations are raw (the agent
    normalises them with the statistics it used to act)."""

    obs: jax.Array  # [T, B, obs_dim]
    extras: Any  # pytree from `collect`, each leaf with leading [T, ...]
    reward: jax.Array  # [T, B]
    next_obs: jax.Array  # [T, B, obs_dim]: the real next state, also when the episode ended
    terminated: jax.Array  # [T, B] float32
    truncated: jax.Array  # [T, B] float32


class OnPolicyAgent(NamedTuple):
    """The pure functions of an on-policy agent.

    * ``init(key) -> state``
    * ``act(state, obs [B, obs_dim], key, deterministic) -> action [B, A]`` in [-1, 1]
    * ``collect(state, obs [B, obs_dim], key) -> (action [B, A], extras)``: what a rollout
      stores besides the env's outputs (log-probabilities, the denoising chain)
    * ``update(state, rollout, key) -> (state, metrics)``

    ``act``, ``collect`` and ``update`` are jitted; ``phases`` as in
    :class:`diffmaxent.agents.common.Agent`.
    """

    init: Callable[[jax.Array], Any]
    act: Callable[..., jax.Array]
    collect: Callable[..., tuple[jax.Array, Any]]
    update: Callable[..., tuple[Any, Metrics]]
    phases: Mapping[str, Callable[..., Any]] = {}


# --- pieces shared by on-policy agents -----------------------------------------------------------


def gae(
    reward: jax.Array,
    value: jax.Array,
    next_value: jax.Array,
    discount: jax.Array,
    lam: jax.Array,
    terminated: jax.Array,
    done: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) with per-step discounts.

    ``delta_t = r_t + discount_t (1 - terminated_t) V(next_t) - V_t`` and
    ``A_t = delta_t + discount_t lam_t (1 - done_t) A_{t+1}``: a termination stops the bootstrap,
    any episode end (``done``, termination or truncation) stops the trace. Per-step ``discount``
    and ``lam`` let the augmented MDP use one value across the env transition and another
    between denoising steps.

    Args:
        all arrays ``[N, ...]`` in time order (``discount`` and ``lam`` may broadcast).

    Returns:
        ``(advantage, return = advantage + value)``, each ``[N, ...]``.
    """
    discount = jnp.broadcast_to(discount, reward.shape)
    lam = jnp.broadcast_to(lam, reward.shape)
    delta = reward + discount * (1.0 - terminated) * next_value - value
    trace = discount * lam * (1.0 - done)

    def body(next_advantage, inputs):
        delta_t, trace_t = inputs
        advantage = delta_t + trace_t * next_advantage
        return advantage, advantage

    _, advantage = jax.lax.scan(body, jnp.zeros_like(delta[0]), (delta, trace), reverse=True)
    return advantage, advantage + value


class ObsNorm(struct.PyTreeNode):
    """Running mean and variance of observations (parallel Welford), part of the agent state so
    that checkpoints and ``act`` use the statistics training used."""

    mean: jax.Array  # [obs_dim]
    var: jax.Array  # [obs_dim]
    count: jax.Array  # []

    @classmethod
    def create(cls, obs_dim: int) -> ObsNorm:
        return cls(jnp.zeros(obs_dim), jnp.ones(obs_dim), jnp.asarray(1e-4, jnp.float32))

    def update(self, obs: jax.Array) -> ObsNorm:
        """Fold in ``obs [..., obs_dim]``."""
        batch = obs.reshape(-1, obs.shape[-1])
        batch_mean, batch_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        return ObsNorm(mean, var, total)

    def normalize(self, obs: jax.Array, enabled: bool, clip: float = 10.0) -> jax.Array:
        if not enabled:
            return obs
        return jnp.clip((obs - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


def minibatch_epochs(
    gradient_step: Callable[[Any, Any, jax.Array], tuple[Any, Metrics]],
    state: Any,
    data: Any,
    key: jax.Array,
    epochs: int,
    batch_size: int,
) -> tuple[Any, Metrics]:
    """``epochs`` passes over ``data`` (a pytree with leading axis ``[M]``) in shuffled
    minibatches of ``batch_size``, one ``gradient_step(state, minibatch, key)`` each, all in
    ``lax.scan``; the ``M mod batch_size`` left-over samples of a pass are dropped (a different
    random subset each pass). Returns the mean metrics."""
    size = jax.tree_util.tree_leaves(data)[0].shape[0]
    batch_size = min(batch_size, size)
    num_batches = size // batch_size

    def epoch(state, epoch_key):
        perm_key, step_key = jax.random.split(epoch_key)
        index = jax.random.permutation(perm_key, size)[: num_batches * batch_size]
        index = index.reshape(num_batches, batch_size)
        batches = jax.tree_util.tree_map(lambda x: x[index], data)

        def body(state, inputs):
            batch, k = inputs
            return gradient_step(state, batch, k)

        return jax.lax.scan(body, state, (batches, jax.random.split(step_key, num_batches)))

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, epochs))
    return state, jax.tree_util.tree_map(jnp.mean, metrics)


def explained_variance(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """``1 - Var[target - prediction] / Var[target]`` (1 is perfect, 0 is a constant)."""
    return 1.0 - jnp.var(target - prediction) / (jnp.var(target) + 1e-8)


# --- collection ----------------------------------------------------------------------------------


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
    """Running returns of the training envs; ``last`` is the most recent finished episode's."""

    def __init__(self, num_envs: int) -> None:
        self.running = np.zeros(num_envs)
        self.last = math.nan
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


def example_rollout(agent: OnPolicyAgent, state: Any, obs_dim: int, steps: int, envs: int):
    """Zeros with the shapes of a rollout of ``steps x envs`` (for tracing and tests)."""
    obs = jnp.zeros((envs, obs_dim), jnp.float32)
    extras = jax.eval_shape(agent.collect, state, obs, jax.random.PRNGKey(0))[1]
    lead = (steps, envs)
    return Rollout(
        obs=jnp.zeros((*lead, obs_dim), jnp.float32),
        extras=jax.tree_util.tree_map(lambda s: jnp.zeros((steps, *s.shape), s.dtype), extras),
        reward=jnp.zeros(lead, jnp.float32),
        next_obs=jnp.zeros((*lead, obs_dim), jnp.float32),
        terminated=jnp.zeros(lead, jnp.float32),
        truncated=jnp.zeros(lead, jnp.float32),
    )


# --- the loop ------------------------------------------------------------------------------------


def on_policy_loop(
    config: ResolvedConfig,
    agent: OnPolicyAgent,
    env_spec: EnvSpec,
    eval_env: Any,
    run_dir: Path,
    progress: bool | None,
) -> TrainResult:
    """Train ``agent`` for ``config.steps`` env steps and fill ``run_dir`` (see module doc)."""
    from diffmaxent.training import RunRecorder

    loop: OnPolicyLoopConfig = config.loop
    key = jax.random.PRNGKey(config.seed)
    key, init_key = jax.random.split(key)
    state = agent.init(init_key)
    steps_per_rollout = loop.num_envs * loop.rollout_steps
    iterations = -(-config.steps // steps_per_rollout)

    example = example_rollout(agent, state, env_spec.obs_dim, loop.rollout_steps, loop.num_envs)
    metric_names = sorted(jax.eval_shape(agent.update, state, example, key)[1])
    recorder = RunRecorder(
        config, env_spec, eval_env, run_dir, metric_names, iterations * steps_per_rollout, progress
    )
    envs = make_vector_env(config.env, loop.num_envs, config.seed, loop.action_repeat)
    tracker = EpisodeTracker(loop.num_envs)
    try:
        obs, _ = envs.reset()
        obs = np.asarray(obs, np.float32)
        for iteration in range(1, iterations + 1):
            rollout, obs, key = collect_rollout(
                agent, state, envs, obs, key, loop.rollout_steps, tracker
            )
            key, update_key = jax.random.split(key)
            state, metrics = agent.update(state, rollout, update_key)
            env_step = iteration * steps_per_rollout
            recorder.bar.advance(steps_per_rollout)
            passed_eval = env_step // loop.eval_every > (env_step - steps_per_rollout) // (
                loop.eval_every
            )
            if not (passed_eval or iteration == iterations):
                continue
            key, eval_key = jax.random.split(key)
            recorder.evaluation_point(
                agent, state, eval_key, env_step, tracker.last, iteration, metrics
            )
    finally:
        recorder.bar.close()
        envs.close()
    key, plot_key = jax.random.split(key)
    return recorder.finish(agent, state, plot_key, env_step)
