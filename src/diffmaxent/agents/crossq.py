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

import jax
import jax.numpy as jnp
import optax

from diffmaxent.agents.common import (
    Agent,
    CrossQStyleState,
    policy_delayed_step,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    ActorNetwork,
    CrossQCriticSettings,
    CrossQOptimisers,
    Discount,
    TargetEntropy,
    Temperature,
)
from diffmaxent.agents.sac import sample_action, soft_policy_loss
from diffmaxent.config import Preset, with_defaults
from diffmaxent.critics import CrossQCritic
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.nn import GaussianActor
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class CrossQConfig(
    ActorNetwork,
    CrossQCriticSettings,
    TargetEntropy,
    with_defaults(Temperature, temperature_lr=1e-3),
    CrossQOptimisers,
    Discount,
):
    """Gaussian policy with DIME's CrossQ critic; defaults are DIME's shared settings."""


CrossQState = CrossQStyleState


ACTOR_METRICS = ("actor_loss", "entropy")


def actor_loss(
    actor: GaussianActor,
    critic: CrossQCritic,
    actor_params,
    critic_params,
    batch_stats,
    log_temperature: jax.Array,
    obs: jax.Array,
    key: jax.Array,
):
    """SAC's policy objective (eq. 7), reparameterised (eq. 9), on the critics' combined value
    (``critic.reduce``) in evaluation mode: the running BatchRenorm statistics ``batch_stats``
    normalise the pairs and are not updated. ``(loss, entropy estimate -log pi [B])``."""
    action, log_prob = sample_action(actor, actor_params, obs, key)
    q = critic.reduce(critic.q_values(critic_params, batch_stats, obs, action))
    return soft_policy_loss(q, log_prob, log_temperature), -log_prob


def make(config: CrossQConfig, spec: EnvSpec) -> Agent:
    """Build the CrossQ agent's pure ``init`` / ``act`` / ``update`` for one env."""
    actor = GaussianActor(config.actor_hidden_dims, spec.action_dim)
    critic = config.critic(spec.obs_dim, spec.action_dim)
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(spec.action_dim)

    def init(key: jax.Array) -> CrossQState:
        actor_key, critic_key = jax.random.split(key)
        actor_params = actor.init(actor_key, jnp.zeros((1, spec.obs_dim), jnp.float32))
        critic_params, batch_stats = critic.init(critic_key)
        log_temperature = config.initial_log_temperature()
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

    def critic_loss_fn(critic_params, state: CrossQState, batch: Batch, key: jax.Array):
        """Soft Bellman backup (SAC eqs. 5-6) with CrossQ's joint batch and no target network."""
        next_action, next_log_prob = sample_action(actor, state.actor_params, batch.next_obs, key)
        return critic.loss(
            critic_params,
            state.critic_batch_stats,
            batch,
            next_action,
            next_log_prob,
            jnp.exp(state.log_temperature),
            config.gamma,
        )

    actor_loss_fn = functools.partial(actor_loss, actor, critic)

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
            config.learns_temperature,
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
        return sample_action(actor, state.actor_params, obs, key)[0]

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
PAPER_NOTE = "DIME's official settings for its Gaussian baseline, with the critic support of {}."

PRESETS = {
    "paper-dmc": Preset({**PAPER, **_support(200.0)}, PAPER_NOTE.format("DMC"), suite="dmc"),
    "paper-gym": Preset({**PAPER, **_support(1600.0)}, PAPER_NOTE.format("Gym"), suite="gym"),
    "paper-myo": Preset(
        {**PAPER, **_support(200.0)}, PAPER_NOTE.format("the shipped default"), suite="myo"
    ),
    "cpu": Preset(
        {
            "critic_hidden_dims": (256, 256),
            "bn_warmup": 10_000,
            "batch_size": 128,
            "updates_per_step": 2,
            "learning_starts": 1_000,
            "eval_every": 1_000,
            **_support(1600.0),
        },
        "A narrow critic for short CPU runs (about 10 ms per env step on 2 cores).",
    ),
}
