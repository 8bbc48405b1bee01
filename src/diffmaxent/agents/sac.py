"""Soft Actor-Critic with a tanh-squashed Gaussian policy.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (2018b), arXiv:1812.05905:
twin critics with target networks (clipped double-Q), a reparameterised actor, and automatic
temperature tuning towards a target entropy of -|A|. Equation numbers refer to that paper.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffmaxent.agents.common import (
    ActorCriticState,
    Agent,
    AlgoSpec,
    Metrics,
    apply_gradients,
    init_actor_critic_state,
    initial_log_temperature,
    polyak_update,
    scan_updates,
    td_target,
    temperature_is_auto,
    temperature_step,
)
from diffmaxent.config import AUTO, hp
from diffmaxent.distributions import squashed_gaussian_sample
from diffmaxent.envs.factory import EnvSpec
from diffmaxent.nn import MLP, EnsembleCritic
from diffmaxent.types import Batch

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Gaussian SAC hyperparameters (defaults: Haarnoja et al. 2018b, Table 1)."""

    gamma: float = hp(0.99, "discount factor", low=0.0, high=1.0)
    tau: float = hp(0.005, "Polyak step of the target critics", low=0.0, high=1.0)
    actor_lr: float = hp(3e-4, "actor Adam learning rate", low=0.0, low_open=True)
    critic_lr: float = hp(3e-4, "critic Adam learning rate", low=0.0, low_open=True)
    temperature_lr: float = hp(3e-4, "temperature Adam learning rate", low=0.0, low_open=True)
    hidden_dims: tuple[int, ...] = hp((256, 256), "hidden widths of actor and critics", low=1)
    num_critics: int = hp(2, "critics in the ensemble (min over them)", low=1)
    temperature: float | Literal["auto"] = hp(
        AUTO, "entropy temperature alpha: a number, or auto to tune it", low=0.0, low_open=True
    )
    init_temperature: float = hp(1.0, "initial alpha when temperature=auto", low=0.0, low_open=True)
    target_entropy: float | Literal["auto"] = hp(
        AUTO, "entropy target for temperature=auto; auto means -|A|"
    )


class GaussianActor(nn.Module):
    """obs ``[B, obs_dim]`` -> mean and log-std ``[B, A]`` of the pre-tanh Gaussian."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_dims)(obs)
        mean = nn.Dense(self.action_dim)(features)
        # Squash log-std smoothly into [LOG_STD_MIN, LOG_STD_MAX] instead of clipping, so the
        # gradient never vanishes at the bounds.
        raw = jnp.tanh(nn.Dense(self.action_dim)(features))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (raw + 1.0)
        return mean, log_std


SACState = ActorCriticState


def make(config: SACConfig, spec: EnvSpec) -> Agent:
    """Build SAC's pure ``init`` / ``act`` / ``update`` for one env."""
    actor = GaussianActor(config.hidden_dims, spec.action_dim)
    critic = EnsembleCritic(config.hidden_dims, config.num_critics)
    actor_optimizer = optax.adam(config.actor_lr)
    critic_optimizer = optax.adam(config.critic_lr)
    temperature_optimizer = optax.adam(config.temperature_lr)
    learn_temperature = temperature_is_auto(config.temperature)
    target_entropy = (
        -float(spec.action_dim) if config.target_entropy == AUTO else float(config.target_entropy)
    )

    def init(key: jax.Array) -> SACState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, spec.action_dim), jnp.float32)
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, action)
        log_temperature = initial_log_temperature(config.temperature, config.init_temperature)
        return init_actor_critic_state(
            actor_params,
            critic_params,
            log_temperature,
            actor_optimizer,
            critic_optimizer,
            temperature_optimizer,
        )

    def sample_action(actor_params, obs, key):
        mean, log_std = actor.apply(actor_params, obs)
        return squashed_gaussian_sample(mean, log_std, key)

    def critic_loss_fn(critic_params, state: SACState, batch: Batch, key):
        """Soft Bellman residual (eqs. 5-6), with clipped double-Q on the target networks."""
        next_action, next_log_prob = sample_action(state.actor_params, batch.next_obs, key)
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(axis=0)
        temperature = jnp.exp(state.log_temperature)
        target = td_target(
            batch.reward, batch.terminated, next_q - temperature * next_log_prob, config.gamma
        )
        q = critic.apply(critic_params, batch.obs, batch.action)
        loss = 0.5 * jnp.sum(jnp.mean((q - jax.lax.stop_gradient(target)) ** 2, axis=-1))
        return loss, {"critic_loss": loss, "q_mean": q.mean()}

    def actor_loss_fn(actor_params, critic_params, log_temperature, obs, key):
        """Policy objective (eq. 7) with the reparameterisation trick (eq. 9)."""
        action, log_prob = sample_action(actor_params, obs, key)
        q = critic.apply(critic_params, obs, action).min(axis=0)
        loss = jnp.mean(jnp.exp(log_temperature) * log_prob - q)
        return loss, -log_prob

    def gradient_step(state: SACState, batch: Batch, key: jax.Array) -> tuple[SACState, Metrics]:
        critic_key, actor_key = jax.random.split(key)
        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, critic_key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )
        target_critic_params = polyak_update(state.target_critic_params, critic_params, config.tau)

        (actor_loss, entropy), actor_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            state.actor_params, critic_params, state.log_temperature, batch.obs, actor_key
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )

        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            learn_temperature,
        )
        new_state = state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            log_temperature=log_temperature,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            temperature_opt_state=temperature_opt_state,
            step=state.step + 1,
        )
        metrics = {
            **critic_metrics,
            "actor_loss": actor_loss,
            "entropy": entropy.mean(),
            "temperature": jnp.exp(log_temperature),
        }
        return new_state, metrics

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: SACState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic:
            mean, _ = actor.apply(state.actor_params, obs)
            return jnp.tanh(mean)
        return sample_action(state.actor_params, obs, key)[0]

    @jax.jit
    def update(state: SACState, batch: Batch, key: jax.Array) -> tuple[SACState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: SACState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def actor_step(state: SACState, batch: Batch, key: jax.Array):
        return jax.grad(actor_loss_fn, has_aux=True)(
            state.actor_params, state.critic_params, state.log_temperature, batch.obs, key
        )

    phases = {"critic step": jax.jit(critic_step), "actor step": jax.jit(actor_step)}
    return Agent(init=init, act=act, update=update, phases=phases)


ALGO = AlgoSpec(
    name="sac",
    description="Soft Actor-Critic, tanh-Gaussian policy, twin critics, auto temperature",
    config_cls=SACConfig,
    make=make,
    preset_suites={"paper": "gym"},
    presets={
        # Haarnoja et al. 2018b, Table 1 (learning_starts as in their released code).
        "paper": {"learning_starts": 10_000},
        # Same networks; random warm-up and evaluation sized for short CPU runs.
        "cpu": {"learning_starts": 1_000},
    },
)
