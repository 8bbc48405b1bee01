"""Pieces every replay-based agent composes: the agent interface, the states of SAC-style and
CrossQ-style agents, gradient steps, Polyak averaging and the temperature step."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent.types import Metrics


class Agent(NamedTuple):
    """The pure functions of one agent, built for one config and env.

    * ``init(key) -> state``
    * ``act(state, obs [B, obs_dim], key, deterministic) -> action [B, action_dim]`` in [-1, 1]
    * ``update(state, batch, key) -> (state, metrics)``: ``batch`` has leading shape
      ``[num_updates, batch_size]``; one gradient step per leading index, run with ``lax.scan``.

    ``act`` and ``update`` are jitted; ``deterministic`` is static. ``phases`` names the parts
    of one gradient step, each a jitted ``fn(state, batch [B, ...], key)``, so that
    ``diffmaxent bench`` can report where the time goes.

    Agents that improve the actions stored in the replay buffer (DIPO) also give
    ``update_improving_actions(state, batch, improved_action [N, B, A], key) -> (state, metrics,
    improved_action [N, B, A])``: the same gradient steps, where ``improved_action`` holds the
    sampled rows' improved actions so far and the returned ones are written back to those rows by
    the replay loop. Their ``update`` is that step with the taken actions as the improved ones.
    """

    init: Callable[[jax.Array], Any]
    act: Callable[..., jax.Array]
    update: Callable[..., tuple[Any, Metrics]]
    phases: Mapping[str, Callable[..., Any]] = {}
    update_improving_actions: Callable[..., tuple[Any, Metrics, jax.Array]] | None = None


MATMUL_PRECISIONS: tuple[str, ...] = ("default", "high", "highest")


def with_matmul_precision(agent: Agent, precision: str) -> Agent:
    """``agent`` whose functions trace their float32 matrix products at ``precision``.

    ``default`` is the backend's own choice: full float32 on CPUs, TF32 (a 10-bit mantissa) on
    NVIDIA GPUs since Ampere; ``highest`` is full float32 everywhere; ``high`` is bf16_3x / TF32
    by backend. JAX reads the setting when it traces, so the wrapped functions carry it into
    every jitted caller (the loops' seed axis included)."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; expected {MATMUL_PRECISIONS}")
    if precision == "default":
        return agent

    def traced_at_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with jax.default_matmul_precision(precision):
                return fn(*args, **kwargs)

        return wrapped

    improving = agent.update_improving_actions
    return Agent(
        init=traced_at_precision(agent.init),
        act=traced_at_precision(agent.act),
        update=traced_at_precision(agent.update),
        phases={name: traced_at_precision(fn) for name, fn in agent.phases.items()},
        update_improving_actions=None if improving is None else traced_at_precision(improving),
    )


class ActorCriticState(struct.PyTreeNode):
    """Parameters and optimiser states of an actor, critics with target copies, and a
    temperature: the state of SAC-style agents (SAC, MaxEntDP)."""

    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_temperature: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    step: jax.Array


def init_actor_critic_state(
    actor_params: Any,
    critic_params: Any,
    log_temperature: jax.Array,
    actor_optimizer: optax.GradientTransformation,
    critic_optimizer: optax.GradientTransformation,
    temperature_optimizer: optax.GradientTransformation,
) -> ActorCriticState:
    """Fresh optimiser states, and target critics that start equal to the critics."""
    return ActorCriticState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=critic_params,
        log_temperature=log_temperature,
        actor_opt_state=actor_optimizer.init(actor_params),
        critic_opt_state=critic_optimizer.init(critic_params),
        temperature_opt_state=temperature_optimizer.init(log_temperature),
        step=jnp.zeros((), jnp.int32),
    )


def apply_gradients(
    optimizer: optax.GradientTransformation, params: Any, opt_state: optax.OptState, grads: Any
) -> tuple[Any, optax.OptState]:
    """One optimiser step: ``(new_params, new_opt_state)``."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


class TargetPolicyState(struct.PyTreeNode):
    """A policy and twin critics, each with a Polyak-averaged target copy, their optimiser states
    and the step: the state of DIPO and QVPO."""

    actor_params: Any
    target_actor_params: Any
    critic_params: Any
    target_critic_params: Any
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    step: jax.Array


def init_target_policy_state(
    actor_params: Any,
    critic_params: Any,
    actor_optimizer: optax.GradientTransformation,
    critic_optimizer: optax.GradientTransformation,
) -> TargetPolicyState:
    """Targets start equal to the online networks; the step at zero."""
    return TargetPolicyState(
        actor_params=actor_params,
        target_actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=critic_params,
        actor_opt_state=actor_optimizer.init(actor_params),
        critic_opt_state=critic_optimizer.init(critic_params),
        step=jnp.zeros((), jnp.int32),
    )


class CrossQStyleState(struct.PyTreeNode):
    """State of agents on the CrossQ critic (DIME, CrossQ): no target critics, BatchRenorm
    statistics, and a policy-delayed actor whose latest metrics are carried between its steps."""

    actor_params: Any
    critic_params: Any
    critic_batch_stats: Any
    log_temperature: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    actor_metrics: Any  # the latest actor step's metrics (reported between actor steps)
    step: jax.Array


def policy_delayed_step(
    state: CrossQStyleState,
    batch: Any,
    key: jax.Array,
    *,
    critic_loss_fn: Callable[..., Any],
    critic_optimizer: optax.GradientTransformation,
    actor_step: Callable[..., Any],
    policy_delay: int,
) -> tuple[CrossQStyleState, Metrics]:
    """One critic step, then the actor and temperature step on every ``policy_delay``-th call.

    ``critic_loss_fn(critic_params, state, batch, key) -> (loss, (batch_stats, metrics))``;
    ``actor_step(state, critic_params, batch_stats, obs, key) -> (actor_params, actor_opt_state,
    log_temperature, temperature_opt_state, metrics)``. The skipped branch of ``lax.cond`` keeps
    the actor, temperature and their last metrics unchanged.
    """
    critic_key, actor_key = jax.random.split(key)
    (_, (batch_stats, critic_metrics)), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        state.critic_params, state, batch, critic_key
    )
    critic_params, critic_opt_state = apply_gradients(
        critic_optimizer, state.critic_params, state.critic_opt_state, grads
    )

    def with_actor(_):
        return actor_step(state, critic_params, batch_stats, batch.obs, actor_key)

    def without_actor(_):
        return (
            state.actor_params,
            state.actor_opt_state,
            state.log_temperature,
            state.temperature_opt_state,
            state.actor_metrics,
        )

    do_actor = (state.step + 1) % policy_delay == 0
    actor_params, actor_opt_state, log_temperature, temperature_opt_state, actor_metrics = (
        jax.lax.cond(do_actor, with_actor, without_actor, None)
    )
    new_state = state.replace(
        actor_params=actor_params,
        critic_params=critic_params,
        critic_batch_stats=batch_stats,
        log_temperature=log_temperature,
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        temperature_opt_state=temperature_opt_state,
        actor_metrics=actor_metrics,
        step=state.step + 1,
    )
    metrics = {**critic_metrics, **actor_metrics, "temperature": jnp.exp(log_temperature)}
    return new_state, metrics


def polyak_update(target_params: Any, online_params: Any, tau: float) -> Any:
    """``target <- (1 - tau) * target + tau * online``, leaf by leaf."""
    return jax.tree_util.tree_map(
        lambda t, o: (1.0 - tau) * t + tau * o, target_params, online_params
    )


def scan_updates(
    gradient_step: Callable[[Any, Any, jax.Array], tuple[Any, Metrics]],
    state: Any,
    batches: Any,
    key: jax.Array,
) -> tuple[Any, Metrics]:
    """Run one ``gradient_step(state, batch, key)`` per leading index of ``batches`` with
    ``lax.scan``; the metrics returned are the mean over the steps."""
    num_steps = jax.tree_util.tree_leaves(batches)[0].shape[0]
    keys = jax.random.split(key, num_steps)

    def body(carry, inputs):
        batch, step_key = inputs
        return gradient_step(carry, batch, step_key)

    state, metrics = jax.lax.scan(body, state, (batches, keys))
    return state, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics)


# --- temperature ---------------------------------------------------------------------------------


def temperature_loss(
    log_temperature: jax.Array, entropy: jax.Array, target_entropy: float
) -> jax.Array:
    """SAC's temperature objective (Haarnoja et al. 2018b, eq. 18) in log-space:
    ``log(alpha) * (H - H_target)``, so alpha falls when the policy's entropy ``H`` (an estimate,
    gradient stopped) is above the target and rises when below."""
    return log_temperature * jax.lax.stop_gradient(jnp.mean(entropy) - target_entropy)


def temperature_step(
    log_temperature: jax.Array,
    opt_state: optax.OptState,
    optimizer: optax.GradientTransformation,
    entropy: jax.Array,
    target_entropy: float,
    learn: bool,
) -> tuple[jax.Array, optax.OptState]:
    """One optimiser step on the temperature if it is learned; unchanged if it is fixed."""
    if not learn:
        return log_temperature, opt_state
    grad = jax.grad(temperature_loss)(log_temperature, entropy, target_entropy)
    updates, opt_state = optimizer.update(grad, opt_state, log_temperature)
    return optax.apply_updates(log_temperature, updates), opt_state
