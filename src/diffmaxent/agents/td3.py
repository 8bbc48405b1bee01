"""TD3: Twin Delayed Deep Deterministic policy gradient.

Fujimoto, van Hoof and Meger, "Addressing Function Approximation Error in Actor-Critic Methods",
ICML 2018, arXiv:1802.09477 (Algorithm 1). DDPG's deterministic actor ``pi_phi(s)`` and critic,
with three changes:

* clipped double Q-learning (Sec. 4.2, eq. 10): twin critics regress one target built from the
  smaller of the two target critics, ``y = r + gamma (1 - terminated) min_j Q_theta'_j(s', a~)``;
* target policy smoothing (Sec. 5.3, eq. 15): the target action is the target actor's with clipped
  Gaussian noise, ``a~ = clip(pi_phi'(s') + eps, -1, 1)``, ``eps ~ clip(N(0, sigma~^2), -c, c)``
  (``target_noise`` sigma~ = 0.2, ``target_noise_clip`` c = 0.5);
* delayed policy updates (Sec. 5.2): the actor takes one deterministic policy gradient step on the
  first critic, ``max_phi mean Q_theta_1(s, pi_phi(s))``, after every ``policy_delay`` (d = 2)
  critic steps, and only then are the target actor and target critics Polyak-averaged.

Behaviour actions are ``clip(pi_phi(s) + N(0, 0.1^2), -1, 1)`` (``exploration_noise``);
evaluation (``deterministic=True``) takes ``pi_phi(s)``. Actions live in [-1, 1] here, so the
noises, which the code scales by ``max_action``, are in units of the action box's half-width.

Paper vs official code (sfujim/TD3 @ 34770cc; the paper's values are the defaults, the code's
those of the ``official`` preset):

* networks: the paper's 400-300 ReLU actor and critics (``actor_hidden_dims``,
  ``critic_hidden_dims``); the code's 256-256 since 2019;
* Adam learning rate 1e-3 for actor and critics (the paper); the code's 3e-4;
* batch 100 (the paper) against the code's 256; both keep a replay of 1e6 transitions;
* random actions before learning: the paper's 10k steps on HalfCheetah and Ant and 1k on the other
  tasks (the ``paper`` preset's per-task values, as its run script), the code's 25k on every task;
* evaluation: 10 episodes without noise every 5k steps in paper and code;
* one update per env step as in the current code; the paper-era code ran all of an episode's
  updates at its end (not reproduced: the replay loop here updates every step). The actor steps
  at critic steps d, 2d, ... as in the current code (the paper-era code's at 0, d, ...);
* actor loss on the first critic only, the critic loss the sum of both critics' mean squared
  errors, and the targets updated only on actor steps, in paper and code alike; the target actor's
  Polyak step is ``actor_tau`` (the code's ``tau`` for both);
* the code ends the bootstrap only at a true termination, not at a time limit, as every agent of
  the library does; PyTorch's default layer initialisation is not reproduced (flax's lecun-normal).

MaxEntDP (Dong et al. 2025, Table B2) ran TD3 with the current code's values (batch 256, lr 3e-4,
two hidden layers of 256 ReLU units, buffer 1e6): the ``official`` preset.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffmaxent.agents.common import (
    Agent,
    TargetPolicyState,
    apply_gradients,
    init_target_policy_state,
    polyak_update,
    scan_updates,
)
from diffmaxent.agents.groups import ActorNetwork, Discount, Optimisers, TargetCritics
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.nn import MLP, EnsembleCritic
from diffmaxent.types import Batch, Metrics

PAPER_HIDDEN_DIMS = (400, 300)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TD3Config(
    with_defaults(ActorNetwork, actor_hidden_dims=PAPER_HIDDEN_DIMS),
    with_defaults(TargetCritics, critic_hidden_dims=PAPER_HIDDEN_DIMS),
    with_defaults(Optimisers, actor_lr=1e-3, critic_lr=1e-3),
    Discount,
):
    """TD3 hyperparameters; defaults are the paper's (Sec. 6.1 and its appendix)."""

    exploration_noise: float = hp(
        0.1, "std of the Gaussian added to behaviour actions (code: 0.1)", low=0.0
    )
    target_noise: float = hp(0.2, "std of the Gaussian added to a' in the TD target", low=0.0)
    target_noise_clip: float = hp(
        0.5, "c: the noise added to a' in the TD target is clipped to [-c, c]", low=0.0
    )
    policy_delay: int = hp(2, "critic steps per actor step", low=1)
    actor_tau: float = hp(0.005, "Polyak step of the target (reference) actor", low=0.0, high=1.0)


TD3State = TargetPolicyState


# --- the three pieces of Algorithm 1: pure functions of the networks and the batch --------------


def policy_action(actor: MLP, actor_params, obs: jax.Array) -> jax.Array:
    """The deterministic policy ``pi_phi(s)``, tanh-squashed into the box: ``[B, obs_dim]`` ->
    ``[B, A]``."""
    return jnp.tanh(actor.apply(actor_params, obs))


def smoothed_target_action(
    target_action: jax.Array, key: jax.Array, noise_std: float, noise_clip: float
) -> jax.Array:
    """Target policy smoothing (eq. 15): ``clip(a' + clip(eps, -c, c), -1, 1)`` with
    ``eps ~ N(0, noise_std^2)``; ``[B, A]`` -> ``[B, A]``."""
    noise = noise_std * jax.random.normal(key, target_action.shape)
    return jnp.clip(target_action + jnp.clip(noise, -noise_clip, noise_clip), -1.0, 1.0)


def clipped_double_q_target(
    actor: MLP,
    critic: EnsembleCritic,
    config: TD3Config,
    state: TD3State,
    batch: Batch,
    key: jax.Array,
) -> jax.Array:
    """``y = r + gamma (1 - terminated) min_j Q_theta'_j(s', a~)`` (eq. 10) at the target actor's
    smoothed action ``a~`` (eq. 15), target networks throughout: ``[B]``, gradient stopped."""
    next_action = smoothed_target_action(
        policy_action(actor, state.target_actor_params, batch.next_obs),
        key,
        config.target_noise,
        config.target_noise_clip,
    )
    next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(axis=0)
    return jax.lax.stop_gradient(td_target(batch.reward, batch.terminated, next_q, config.gamma))


def critic_loss(
    actor: MLP,
    critic: EnsembleCritic,
    config: TD3Config,
    critic_params,
    state: TD3State,
    batch: Batch,
    key: jax.Array,
):
    """Each critic's mean squared error to the shared target ``y``, summed over the critics
    (Algorithm 1, as the code's sum of MSE losses): ``(loss, metrics)``."""
    target = clipped_double_q_target(actor, critic, config, state, batch, key)
    q = critic.apply(critic_params, batch.obs, batch.action)
    loss = jnp.sum(jnp.mean((q - target) ** 2, axis=-1))
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(
    actor: MLP, critic: EnsembleCritic, actor_params, critic_params, obs: jax.Array
) -> jax.Array:
    """The deterministic policy gradient's objective on the first critic only (Algorithm 1):
    ``-mean Q_theta_1(s, pi_phi(s))``."""
    return -jnp.mean(critic.apply(critic_params, obs, policy_action(actor, actor_params, obs))[0])


def make(config: TD3Config, spec: EnvSpec) -> Agent:
    """Build TD3's pure ``init`` / ``act`` / ``update`` for one env."""
    actor = MLP(config.actor_hidden_dims, spec.action_dim)
    critic = config.critic()
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()

    def init(key: jax.Array) -> TD3State:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, jnp.zeros((1, spec.action_dim), jnp.float32))
        return init_target_policy_state(
            actor_params, critic_params, actor_optimizer, critic_optimizer
        )

    critic_loss_fn = functools.partial(critic_loss, actor, critic, config)
    actor_loss_fn = functools.partial(actor_loss, actor, critic)

    def gradient_step(state: TD3State, batch: Batch, key: jax.Array) -> tuple[TD3State, Metrics]:
        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )

        def actor_and_target_step(_):
            loss, grads = jax.value_and_grad(actor_loss_fn)(
                state.actor_params, critic_params, batch.obs
            )
            actor_params, actor_opt_state = apply_gradients(
                actor_optimizer, state.actor_params, state.actor_opt_state, grads
            )
            target_actor_params = polyak_update(
                state.target_actor_params, actor_params, config.actor_tau
            )
            target_critic_params = polyak_update(
                state.target_critic_params, critic_params, config.tau
            )
            return actor_params, actor_opt_state, target_actor_params, target_critic_params, loss

        def critic_only(_):
            # The policy objective is still reported (a forward pass), so that every step's
            # metrics mean the same thing.
            loss = actor_loss_fn(state.actor_params, critic_params, batch.obs)
            return (
                state.actor_params,
                state.actor_opt_state,
                state.target_actor_params,
                state.target_critic_params,
                loss,
            )

        is_actor_step = (state.step + 1) % config.policy_delay == 0
        actor_params, actor_opt_state, target_actor_params, target_critic_params, loss = (
            jax.lax.cond(is_actor_step, actor_and_target_step, critic_only, None)
        )
        new_state = state.replace(
            actor_params=actor_params,
            target_actor_params=target_actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=state.step + 1,
        )
        return new_state, {**critic_metrics, "actor_loss": loss}

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: TD3State, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        """``pi_phi(s)`` for evaluation; the behaviour action ``clip(pi_phi(s) + N(0,
        exploration_noise^2), -1, 1)`` otherwise."""
        action = policy_action(actor, state.actor_params, obs)
        if deterministic:
            return action
        noise = config.exploration_noise * jax.random.normal(key, action.shape)
        return jnp.clip(action + noise, -1.0, 1.0)

    @jax.jit
    def update(state: TD3State, batch: Batch, key: jax.Array) -> tuple[TD3State, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: TD3State, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def actor_step(state: TD3State, batch: Batch, key: jax.Array):
        return jax.grad(actor_loss_fn)(state.actor_params, state.critic_params, batch.obs)

    phases = {"critic step": jax.jit(critic_step), "actor step": jax.jit(actor_step)}
    return Agent(init=init, act=act, update=update, phases=phases)


# The paper's random warm-up: 10k steps on HalfCheetah and Ant, 1k on the other tasks it ran.
PAPER_SHORT_WARMUP_TASKS = (
    "Hopper",
    "Walker2d",
    "InvertedPendulum",
    "InvertedDoublePendulum",
    "Reacher",
)
PAPER_VALUES = {"batch_size": 100, "learning_starts": 10_000, "eval_every": 5_000}

# The official code's values since 2019 (also MaxEntDP's Table B2 column for TD3).
OFFICIAL_VALUES = {
    "actor_hidden_dims": (256, 256),
    "critic_hidden_dims": (256, 256),
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "batch_size": 256,
    "learning_starts": 25_000,
    "eval_every": 5_000,
}

PRESETS = {
    "paper": Preset(
        PAPER_VALUES,
        "Fujimoto et al. 2018 as published: 400-300 ReLU networks, Adam 1e-3, batch 100, "
        "sigma 0.1 / 0.2, c 0.5, d 2, tau 0.005; 10k random steps on HalfCheetah and Ant, 1k on "
        "the paper's other tasks; evaluation every 5k steps.",
        suite="gym",
        per_task={task: {"learning_starts": 1_000} for task in PAPER_SHORT_WARMUP_TASKS},
    ),
    "official": Preset(
        OFFICIAL_VALUES,
        "The official code (sfujim/TD3) today, and MaxEntDP's Table B2: 256-256 networks, "
        "Adam 3e-4, batch 256, 25k random steps, evaluation every 5k steps.",
        suite="gym",
    ),
    "cpu": Preset(
        {
            "actor_hidden_dims": (128, 128),
            "critic_hidden_dims": (128, 128),
            "batch_size": 128,
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "The paper's algorithm and learning rates with 128x128 networks, batch 128, 1k random "
        "steps and an evaluation every 1k steps, for short CPU runs.",
    ),
}
