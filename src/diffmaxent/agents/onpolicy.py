"""What on-policy agents (PPO, DiffPPO) share: the rollout they learn from, the agent interface,
GAE, running observation normalisation, minibatch epochs and explained variance.

The rollout loop (:mod:`diffmaxent.loops.rollout`) collects a :class:`Rollout` with the agent's
``collect`` and hands it to the agent's ``update``, which computes values, advantages and its
minibatch epochs inside one jitted call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from diffmaxent.types import Metrics


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
