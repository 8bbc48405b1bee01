"""PPO with a Gaussian policy: the on-policy baseline of the DMERL experiments.

Schulman et al., "Proximal Policy Optimization Algorithms" (2017), arXiv:1707.06347, with GAE
(Schulman et al. 2016) and the usual implementation choices of CleanRL's ``ppo_continuous_action``
(Huang et al., "The 37 implementation details of PPO", 2022): a state-independent log-std, actions
clipped to [-1, 1] by the env while the rollout keeps the unclipped sample for the ratio,
advantages normalised per minibatch, separate Adam optimisers with global-norm clipping, running
observation normalisation. Equation numbers refer to the PPO paper.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent.agents.groups import ActorNetwork, CriticNetwork, Discount, Optimisers, PPOCore
from diffmaxent.agents.onpolicy import (
    ObsNorm,
    OnPolicyAgent,
    Rollout,
    explained_variance,
    gae,
    minibatch_epochs,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.distributions import gaussian_log_prob
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.nn import MLP
from diffmaxent.types import Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig(
    with_defaults(ActorNetwork, actor_hidden_dims=(64, 64)),
    with_defaults(CriticNetwork, critic_hidden_dims=(64, 64)),
    PPOCore,
    Optimisers,
    Discount,
):
    """Gaussian PPO hyperparameters (defaults: CleanRL's continuous-control settings)."""

    init_log_std: float = hp(0.0, "initial log-std of the Gaussian")
    entropy_coef: float = hp(0.0, "weight of the Gaussian's entropy bonus", low=0.0)


class GaussianPolicy(nn.Module):
    """obs ``[..., obs_dim]`` -> mean ``[..., A]`` and a state-independent log-std ``[A]``."""

    hidden_dims: tuple[int, ...]
    action_dim: int
    init_log_std: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = MLP(self.hidden_dims, self.action_dim, "tanh", output_scale=0.01)(obs)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
        )
        return mean, log_std


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian, ``sum_i (log std_i + 0.5 log(2 pi e))``; with the
    state-independent log-std it is the same for every state."""
    return jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e))


def ppo_loss(
    log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantage: jax.Array,
    log_std: jax.Array,
    value: jax.Array,
    returns: jax.Array,
    *,
    clip: float,
    entropy_coef: float,
) -> tuple[jax.Array, Metrics]:
    """Clipped surrogate (eq. 7) minus the entropy bonus, plus the value regression.

    ``log_prob``, ``old_log_prob`` (at collection), ``advantage``, ``value`` and ``returns``
    are ``[B]``; ``log_std [A]``. With ``r = exp(log_prob - old_log_prob)`` the surrogate is
    ``-mean(min(r A, clip(r, 1 - clip, 1 + clip) A))``: a ratio beyond the clip in the
    direction the advantage favours gives no further gain (and no gradient); the value loss is
    ``0.5 mean (V - R)^2``. Returns ``(loss, metrics)``."""
    ratio = jnp.exp(log_prob - old_log_prob)
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    policy_loss = -jnp.mean(jnp.minimum(ratio * advantage, clipped * advantage))
    entropy = gaussian_entropy(log_std)
    value_loss = 0.5 * jnp.mean((value - returns) ** 2)
    loss = policy_loss - entropy_coef * entropy + value_loss
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - jnp.log(ratio)),
        "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > clip),
    }
    return loss, metrics


class PPOState(struct.PyTreeNode):
    actor_params: dict
    critic_params: dict
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    obs_norm: ObsNorm
    step: jax.Array


def make(config: PPOConfig, spec: EnvSpec) -> OnPolicyAgent:
    """Build PPO's pure ``init`` / ``act`` / ``collect`` / ``update`` for one env."""
    actor = GaussianPolicy(config.actor_hidden_dims, spec.action_dim, config.init_log_std)
    critic = MLP(config.critic_hidden_dims, 1, "tanh")
    actor_optimizer = config.clip_gradients(config.actor_optimizer())
    critic_optimizer = config.clip_gradients(config.critic_optimizer())

    def init(key: jax.Array) -> PPOState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs)
        return PPOState(
            actor_params=actor_params,
            critic_params=critic_params,
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            obs_norm=ObsNorm.create(spec.obs_dim),
            step=jnp.zeros((), jnp.int32),
        )

    def value(critic_params, obs):
        return critic.apply(critic_params, obs)[..., 0]

    def loss_fn(params, batch, advantage):
        actor_params, critic_params = params
        mean, log_std = actor.apply(actor_params, batch["obs"])
        log_prob = gaussian_log_prob(batch["sample"], mean, jnp.broadcast_to(log_std, mean.shape))
        return ppo_loss(
            log_prob,
            batch["log_prob"],
            advantage,
            log_std,
            value(critic_params, batch["obs"]),
            batch["return"],
            clip=config.clip,
            entropy_coef=config.entropy_coef,
        )

    def gradient_step(state: PPOState, batch: dict, key: jax.Array) -> tuple[PPOState, Metrics]:
        del key
        advantage = batch["advantage"]
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        params = (state.actor_params, state.critic_params)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, advantage)
        updates, actor_opt_state = actor_optimizer.update(
            grads[0], state.actor_opt_state, state.actor_params
        )
        actor_params = optax.apply_updates(state.actor_params, updates)
        updates, critic_opt_state = critic_optimizer.update(
            grads[1], state.critic_opt_state, state.critic_params
        )
        critic_params = optax.apply_updates(state.critic_params, updates)
        new_state = state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=state.step + 1,
        )
        return new_state, metrics

    @jax.jit
    def collect(state: PPOState, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
        mean, log_std = actor.apply(
            state.actor_params, state.obs_norm.normalize(obs, config.normalize_obs)
        )
        log_std = jnp.broadcast_to(log_std, mean.shape)
        sample = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        extras = {"sample": sample, "log_prob": gaussian_log_prob(sample, mean, log_std)}
        return jnp.clip(sample, -1.0, 1.0), extras

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: PPOState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic:
            mean, _ = actor.apply(
                state.actor_params, state.obs_norm.normalize(obs, config.normalize_obs)
            )
            return jnp.clip(mean, -1.0, 1.0)
        return collect(state, obs, key)[0]

    @jax.jit
    def update(state: PPOState, rollout: Rollout, key: jax.Array) -> tuple[PPOState, Metrics]:
        obs = state.obs_norm.normalize(rollout.obs, config.normalize_obs)
        next_obs = state.obs_norm.normalize(rollout.next_obs, config.normalize_obs)
        values = value(state.critic_params, obs)
        done = jnp.maximum(rollout.terminated, rollout.truncated)
        advantage, returns = gae(
            config.reward_scale * rollout.reward,
            values,
            value(state.critic_params, next_obs),
            config.gamma,
            config.gae_lambda,
            rollout.terminated,
            done,
        )
        data = {
            "obs": obs,
            "sample": rollout.extras["sample"],
            "log_prob": rollout.extras["log_prob"],
            "advantage": advantage,
            "return": returns,
        }
        data = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), data)
        state, metrics = minibatch_epochs(
            gradient_step, state, data, key, config.epochs, config.batch_size
        )
        # Statistics change after the epochs, so every ratio above used the acting statistics.
        state = state.replace(obs_norm=state.obs_norm.update(rollout.obs))
        metrics["explained_variance"] = explained_variance(values, returns)
        return state, metrics

    return OnPolicyAgent(init=init, act=act, collect=collect, update=update)


# The DA-MDP code's PPO baseline (ppo_mjx.py) where it applies to a CPU vector env.
PAPER = {
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "actor_hidden_dims": (256, 256),
    "critic_hidden_dims": (256, 256),
    "epochs": 10,
    "batch_size": 256,
    "num_envs": 16,
    "rollout_steps": 256,
    # The baseline's evaluation samples the Gaussian (ppo_mjx.py, make_policy).
    "eval_deterministic": False,
}

PRESETS = {
    "paper": Preset(
        PAPER,
        "The DA-MDP code's PPO baseline settings (it runs DeepMind Control on MJX) where they "
        "apply to a CPU vector env, and its evaluation: sampled actions.",
        suite="dmc",
    ),
    "mjx": Preset(
        {
            **PAPER,
            "num_envs": 2048,
            "rollout_steps": 128,
            "batch_size": 2048,
            "epochs": 16,
        },
        "paper at the DA-MDP code's scale on MJX (its DA-MDP PPO config): 2048 envs x 128 steps "
        "per update in 128 minibatches x 16 epochs, i.e. 2,048 gradient steps per 262,144 env "
        "steps, on the device loop.",
        suite="mjx",
    ),
    "cpu": Preset(
        {
            "gamma": 0.95,
            "reward_scale": 0.1,
            "gae_lambda": 0.95,
            "actor_lr": 1e-3,
            "critic_lr": 1e-3,
            "epochs": 10,
            "batch_size": 256,
            "num_envs": 8,
            "rollout_steps": 256,
            "eval_every": 20_000,
        },
        "Tuned on Pendulum-v1 (docs/benchmarks.md, section DMERL): a shorter horizon and rewards "
        "scaled to about [-1.6, 0] per step.",
    ),
}
