"""CrossQ-style soft actor-critic with a tanh-Gaussian policy: DIME's Gaussian baseline.

The policy is SAC's (Haarnoja et al. 2018b) and the critic is the one DIME uses
(:class:`diffmaxent.critics.CrossQCritic`: BatchRenorm, no target network, ``(s, a)`` and
``(s', a')`` in one batch, categorical over ``[v_min, v_max]``), so that a comparison with
``dime`` changes only the policy class, as in the DIME paper's diffusion-vs-Gaussian ablation.
Defaults follow DIME's official settings (mean of the two critics, Adam ``b1 = 0.5``, learning
rates 3e-4, UTD 2 and policy delay 3 in the presets, alpha from 1.0 with Adam 1e-3) with SAC's
target entropy ``-|A|``.

CrossQ as published (Bhatt et al., ICLR 2024) is ``critic_type=scalar q_reduce=min`` with
``actor_lr=critic_lr=1e-3`` and UTD 1; its actor also uses BatchRenorm, which this one does not.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from diffmaxent.agents.common import (
    Agent,
    AlgoSpec,
    CrossQStyleState,
    Metrics,
    initial_log_temperature,
    policy_delayed_step,
    scan_updates,
    temperature_is_auto,
    temperature_step,
)
from diffmaxent.agents.sac import GaussianActor
from diffmaxent.config import AUTO, hp
from diffmaxent.critics import CrossQCritic
from diffmaxent.distributions import squashed_gaussian_sample
from diffmaxent.envs.factory import EnvSpec
from diffmaxent.types import Batch


@dataclasses.dataclass(frozen=True)
class CrossQConfig:
    """Gaussian policy with DIME's CrossQ critic; defaults are DIME's shared settings."""

    gamma: float = hp(0.99, "discount factor", low=0.0, high=1.0)
    actor_lr: float = hp(3e-4, "actor Adam learning rate", low=0.0, low_open=True)
    critic_lr: float = hp(3e-4, "critic Adam learning rate", low=0.0, low_open=True)
    adam_b1: float = hp(0.5, "Adam beta1 of actor and critic (CrossQ's 0.5)", low=0.0, high=1.0)
    hidden_dims: tuple[int, ...] = hp((256, 256), "hidden widths of the actor", low=1)
    critic_hidden_dims: tuple[int, ...] = hp((2048, 2048), "hidden widths of each critic", low=1)
    temperature: float | Literal["auto"] = hp(
        AUTO, "alpha: a number, or auto to tune it", low=0.0, low_open=True
    )
    init_temperature: float = hp(1.0, "initial alpha when temperature=auto", low=0.0, low_open=True)
    temperature_lr: float = hp(1e-3, "alpha Adam learning rate (auto)", low=0.0, low_open=True)
    target_entropy: float | Literal["auto"] = hp(
        AUTO, "entropy target for temperature=auto; auto means -|A|"
    )
    critic_type: Literal["distributional", "scalar"] = hp(
        "distributional", "categorical critic (DIME) or scalar regression (CrossQ)"
    )
    num_atoms: int = hp(101, "atoms of the categorical critic", low=2)
    v_min: float = hp(-200.0, "lowest atom of the categorical critic")
    v_max: float = hp(200.0, "highest atom of the categorical critic")
    critic_entropy_coef: float = hp(0.005, "bonus on the critic distributions' entropy", low=0.0)
    num_critics: int = hp(2, "critics in the ensemble", low=1)
    q_reduce: Literal["mean", "min"] = hp("mean", "combine critics: mean (DIME) or min (CrossQ)")
    bn_momentum: float = hp(0.99, "BatchRenorm running-statistics momentum", low=0.0, high=1.0)
    bn_warmup: int = hp(100_000, "critic steps of plain BatchNorm before renorm", low=0)
    policy_delay: int = hp(3, "critic steps per actor and alpha step", low=1)


CrossQState = CrossQStyleState


ACTOR_METRICS = ("actor_loss", "entropy")


def make(config: CrossQConfig, spec: EnvSpec) -> Agent:
    """Build the CrossQ agent's pure ``init`` / ``act`` / ``update`` for one env."""
    actor = GaussianActor(config.hidden_dims, spec.action_dim)
    critic = CrossQCritic(
        spec.obs_dim,
        spec.action_dim,
        hidden_dims=config.critic_hidden_dims,
        num_critics=config.num_critics,
        head=config.critic_type,
        num_atoms=config.num_atoms,
        v_min=config.v_min,
        v_max=config.v_max,
        entropy_coef=config.critic_entropy_coef,
        q_reduce=config.q_reduce,
        momentum=config.bn_momentum,
        warmup_steps=config.bn_warmup,
    )
    actor_optimizer = optax.adam(config.actor_lr, b1=config.adam_b1)
    critic_optimizer = optax.adam(config.critic_lr, b1=config.adam_b1)
    temperature_optimizer = optax.adam(config.temperature_lr)
    learn_temperature = temperature_is_auto(config.temperature)
    target_entropy = (
        -float(spec.action_dim) if config.target_entropy == AUTO else float(config.target_entropy)
    )

    def init(key: jax.Array) -> CrossQState:
        actor_key, critic_key = jax.random.split(key)
        actor_params = actor.init(actor_key, jnp.zeros((1, spec.obs_dim), jnp.float32))
        critic_params, batch_stats = critic.init(critic_key)
        log_temperature = initial_log_temperature(config.temperature, config.init_temperature)
        return CrossQState(
            actor_params=actor_params,
            critic_params=critic_params,
            critic_batch_stats=batch_stats,
            log_temperature=log_temperature,
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            actor_metrics={name: jnp.zeros((), jnp.float32) for name in ACTOR_METRICS},
            step=jnp.zeros((), jnp.int32),
        )

    def sample_action(actor_params, obs, key):
        mean, log_std = actor.apply(actor_params, obs)
        return squashed_gaussian_sample(mean, log_std, key)

    def critic_loss_fn(critic_params, state: CrossQState, batch: Batch, key: jax.Array):
        """Soft Bellman backup (SAC eqs. 5-6) with CrossQ's joint batch and no target network."""
        next_action, next_log_prob = sample_action(state.actor_params, batch.next_obs, key)
        return critic.loss(
            critic_params,
            state.critic_batch_stats,
            batch,
            next_action,
            next_log_prob,
            jnp.exp(state.log_temperature),
            config.gamma,
        )

    def actor_loss_fn(actor_params, critic_params, batch_stats, log_temperature, obs, key):
        """SAC's policy objective (eq. 7), reparameterised (eq. 9), critics in evaluation mode."""
        action, log_prob = sample_action(actor_params, obs, key)
        q = critic.reduce(critic.q_values(critic_params, batch_stats, obs, action))
        loss = jnp.mean(jnp.exp(log_temperature) * log_prob - q)
        return loss, -log_prob

    def actor_step(state: CrossQState, critic_params, batch_stats, obs, key):
        (loss, entropy), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            state.actor_params, critic_params, batch_stats, state.log_temperature, obs, key
        )
        updates, actor_opt_state = actor_optimizer.update(
            grads, state.actor_opt_state, state.actor_params
        )
        actor_params = optax.apply_updates(state.actor_params, updates)
        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            learn_temperature,
        )
        metrics = {"actor_loss": loss, "entropy": jnp.mean(entropy)}
        return actor_params, actor_opt_state, log_temperature, temperature_opt_state, metrics

    gradient_step = functools.partial(
        policy_delayed_step,
        critic_loss_fn=critic_loss_fn,
        critic_optimizer=critic_optimizer,
        actor_step=actor_step,
        policy_delay=config.policy_delay,
    )

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: CrossQState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic:
            mean, _ = actor.apply(state.actor_params, obs)
            return jnp.tanh(mean)
        return sample_action(state.actor_params, obs, key)[0]

    @jax.jit
    def update(state: CrossQState, batch: Batch, key: jax.Array) -> tuple[CrossQState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_gradient(state: CrossQState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def actor_gradient(state: CrossQState, batch: Batch, key: jax.Array):
        return jax.grad(actor_loss_fn, has_aux=True)(
            state.actor_params,
            state.critic_params,
            state.critic_batch_stats,
            state.log_temperature,
            batch.obs,
            key,
        )

    phases = {"critic step": jax.jit(critic_gradient), "actor step": jax.jit(actor_gradient)}
    return Agent(init=init, act=act, update=update, phases=phases)


def _support(v_max: float) -> dict:
    return {"v_min": -v_max, "v_max": v_max}


PAPER = {
    "batch_size": 256,
    "learning_starts": 5_000,
    "updates_per_step": 2,
    "buffer_size": 1_000_000,
    "eval_every": 3_000,
    "eval_episodes": 5,
}


def cpu_preset(env_id: str) -> dict:
    """A narrow critic for short CPU runs (about 10 ms per env step on 2 cores)."""
    return {
        "critic_hidden_dims": (256, 256),
        "bn_warmup": 10_000,
        "batch_size": 128,
        "updates_per_step": 2,
        "learning_starts": 1_000,
        "eval_every": 1_000,
        **_support(1600.0),
    }


ALGO = AlgoSpec(
    name="crossq",
    description="Gaussian SAC policy with DIME's CrossQ critic (BatchRenorm, no target network)",
    config_cls=CrossQConfig,
    make=make,
    preset_suites={"paper-dmc": "dmc", "paper-gym": "gym", "paper-myo": "myo"},
    presets={
        "paper-dmc": {**PAPER, **_support(200.0)},
        "paper-gym": {**PAPER, **_support(1600.0)},
        "paper-myo": {**PAPER, **_support(200.0)},
        "cpu": cpu_preset,
    },
)
