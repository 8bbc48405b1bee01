"""Soft Actor-Critic with a tanh-squashed Gaussian policy.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (2018b), arXiv:1812.05905:
twin critics with target networks (clipped double-Q), a reparameterised actor, and automatic
temperature tuning towards a target entropy of -|A|. Equation numbers refer to that paper.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffmaxent.agents.common import (
    ActorCriticState,
    Agent,
    apply_gradients,
    init_actor_critic_state,
    polyak_update,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    MJX_THROUGHPUT,
    ActorNetwork,
    Discount,
    Optimisers,
    TargetCritics,
    TargetEntropy,
    Temperature,
)
from diffmaxent.config import Preset
from diffmaxent.critics import td_target
from diffmaxent.distributions import squashed_gaussian_sample
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.nn import EnsembleCritic, GaussianActor
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class SACConfig(ActorNetwork, TargetCritics, TargetEntropy, Temperature, Optimisers, Discount):
    """Gaussian SAC hyperparameters (defaults: Haarnoja et al. 2018b, Table 1)."""


SACState = ActorCriticState


# --- losses: pure functions of the networks, the parameters and the batch ------------------------


def sample_action(
    actor: GaussianActor, actor_params, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``a ~ pi(.|s)`` and ``log pi(a|s)``: obs ``[B, obs_dim]`` -> ``([B, A], [B])``."""
    mean, log_std = actor.apply(actor_params, obs)
    return squashed_gaussian_sample(mean, log_std, key)


def soft_td_target(
    reward: jax.Array,
    terminated: jax.Array,
    next_q: jax.Array,
    next_log_prob: jax.Array,
    temperature: jax.Array,
    gamma: float,
) -> jax.Array:
    """The soft Bellman target (eqs. 5-6) with clipped double-Q:
    ``r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s'))``.

    ``next_q [num_critics, B]`` are the target critics' values at ``a' ~ pi(.|s')``."""
    return td_target(reward, terminated, next_q.min(axis=0) - temperature * next_log_prob, gamma)


def critic_regression_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """``0.5 sum_j mean_B (Q_j(s, a) - target)^2`` (eq. 5): ``q [num_critics, B]``, ``target
    [B]``, whose gradient is stopped."""
    return 0.5 * jnp.sum(jnp.mean((q - jax.lax.stop_gradient(target)) ** 2, axis=-1))


def soft_policy_loss(q: jax.Array, log_prob: jax.Array, log_temperature: jax.Array) -> jax.Array:
    """The policy objective (eq. 7), ``mean(alpha log pi(a|s) - Q(s, a))``: minimising it raises
    Q and the entropy. ``q [B]`` is the critics' combined value (the min for SAC)."""
    return jnp.mean(jnp.exp(log_temperature) * log_prob - q)


def critic_loss(
    actor: GaussianActor,
    critic: EnsembleCritic,
    gamma: float,
    critic_params,
    state: SACState,
    batch: Batch,
    key: jax.Array,
):
    """Soft Bellman residual (eqs. 5-6), with clipped double-Q on the target networks:
    ``(loss, metrics)``."""
    next_action, next_log_prob = sample_action(actor, state.actor_params, batch.next_obs, key)
    next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action)
    temperature = jnp.exp(state.log_temperature)
    target = soft_td_target(
        batch.reward, batch.terminated, next_q, next_log_prob, temperature, gamma
    )
    q = critic.apply(critic_params, batch.obs, batch.action)
    loss = critic_regression_loss(q, target)
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(
    actor: GaussianActor,
    critic: EnsembleCritic,
    actor_params,
    critic_params,
    log_temperature: jax.Array,
    obs: jax.Array,
    key: jax.Array,
):
    """Policy objective (eq. 7) with the reparameterisation trick (eq. 9) on the min over the
    critics: ``(loss, entropy estimate -log pi [B])``."""
    action, log_prob = sample_action(actor, actor_params, obs, key)
    q = critic.apply(critic_params, obs, action).min(axis=0)
    return soft_policy_loss(q, log_prob, log_temperature), -log_prob


def make(config: SACConfig, spec: EnvSpec) -> Agent:
    """Build SAC's pure ``init`` / ``act`` / ``update`` for one env."""
    actor = GaussianActor(config.actor_hidden_dims, spec.action_dim)
    critic = config.critic()
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(spec.action_dim)

    def init(key: jax.Array) -> SACState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, spec.action_dim), jnp.float32)
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, action)
        log_temperature = config.initial_log_temperature()
        return init_actor_critic_state(
            actor_params,
            critic_params,
            log_temperature,
            actor_optimizer,
            critic_optimizer,
            temperature_optimizer,
        )

    critic_loss_fn = functools.partial(critic_loss, actor, critic, config.gamma)
    actor_loss_fn = functools.partial(actor_loss, actor, critic)

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
            config.learns_temperature,
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
        return sample_action(actor, state.actor_params, obs, key)[0]

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


PRESETS = {
    "paper": Preset(
        {"learning_starts": 10_000},
        "Haarnoja et al. 2018b, Table 1 (learning_starts as in their released code).",
        suite="gym",
    ),
    "cpu": Preset(
        {"learning_starts": 1_000},
        "The paper's networks; random warm-up and evaluation sized for short CPU runs.",
    ),
    "mjx": Preset(
        {**MJX_THROUGHPUT, "actor_lr": 1e-3, "critic_lr": 1e-3},
        "High throughput on the device loop, as MuJoCo Playground's tuned Brax SAC for its "
        "DeepMind Control tasks (brax_sac_config): 128 envs, batch 512, 8 gradient steps per step "
        "of all envs (one per 16 env steps), 4M replay rows, 8,192 random steps, actor and critic "
        "lr 1e-3; its runs are 5M env steps (10M on several tasks), action repeat 4 on "
        "PendulumSwingUp. Not carried over: its observation normalisation, LayerNorm in Q, and "
        "entropy target -|A|/2 (ours stays -|A|).",
        suite="mjx",
        per_task={"mjx:PendulumSwingUp": {"action_repeat": 4}},
    ),
}
