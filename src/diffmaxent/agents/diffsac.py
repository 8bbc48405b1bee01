"""DiffSAC: soft actor-critic on the diffusion-augmented MDP (DMERL, Sanokowski, Patil, Knoll,
arXiv:2512.02019, v1/v2; the later version drops DiffSAC).

DiffSAC is described only in the paper's early versions, as "a diffusion value function and a
log-ratio correction", and the public code has no DiffSAC trainer. The equations used here are
SAC's (Haarnoja et al. 2018b, eqs. 5-7) written for the augmented MDP of
:mod:`diffmaxent.diffusion.augmented`, with SAC's ``log pi(a|s)`` replaced by the per-step
log-ratio ``l_j = log p_gen(x_{j+1} | x_j, s, j) - log p_ref(x_j | x_{j+1}, j)`` (the log-ratio
correction). Since a denoising transition
``(s, x_j, j) -> x_{j+1}`` leads deterministically to ``(s, x_{j+1}, j+1)``, the augmented
``Q((s, x_j, j), x_{j+1})`` is a function ``U(s, x_{j+1}, j+1)`` of the latent just produced:
the *diffusion value function* over denoising levels ``m = 1 .. K``.

* (A1) env-transition level: ``U(s, x_K, K) = Q(s, tanh(x_K))``, a twin SAC critic on
  ``(s, a)``, trained from replay (eqs. 5-6) with the soft target
  ``y = r + gamma (1 - terminated) V'(s')``. With ``env_target="chain"`` (default) a whole chain
  is sampled at ``s'`` and ``V'(s') = gamma_d^(K-1) Q'(s', tanh(x_K')) - alpha sum_i gamma_d^i
  l_i'`` (every denoising step's log-ratio correction); with ``env_target="level"`` one kernel
  step from ``x_0' ~ prior`` and ``V'(s') = U'(s', x_1', 1) - alpha l_0'``, the augmented MDP's
  one-step backup. Both have the same expectation; the one-step form passes the env's value
  through ``K - 1`` target networks before it reaches ``Q`` again and learned several times more
  slowly on Pendulum (docs/benchmarks.md, section DMERL);
* (A2) denoising levels ``m = 1 .. K-1``: ``U(s, x_m, m)`` (a twin network on
  ``(s, x_m/prior_std, tanh(x_m), one_hot(m))``) regressed on
  ``y_m = gamma_d [U'(s, x_{m+1}, m+1) - alpha l_m]`` (``level_target="td"``, default; ``U'`` at
  level ``K`` is ``Q'``) or on the chain's own return ``G_m = gamma_d (G_{m+1} - alpha l_m)``,
  ``G_K = Q'(s, tanh(x_K))`` (``"chain"``), along chains sampled by the current policy at replay
  states (the intermediate transitions are known and cheap, so they are regenerated rather than
  replayed); ``U'`` is the target network, min over the twins;
* (A3) policy improvement at every augmented state ``(s, x_j, j)``, ``j = 0 .. K-1``, with
  ``x_j`` from a sampled chain and held fixed: minimise
  ``E[alpha l_j(x_j -> x_{j+1}) - U(s, x_{j+1}, j+1)]`` with ``x_{j+1} = mu_theta(x_j, s, j) +
  sigma_j eps`` reparameterised (eq. 7 and 9 for each denoising kernel): each kernel sees a
  one-step lookahead, no gradient runs through the chain;
* (A4) temperature: SAC's rule (eq. 18) on the chain's entropy estimate ``-sum_j l_j``, target
  ``-3 |A|`` by default (the DA-MDP code's PPO multiplier; the estimate is relative to the
  prior's entropy).

The network output is DIME's drift ``f`` by default (``control="drift"``, as DIME and the DA-MDP
code); ``control="noise"`` scales it by ``sqrt(2 / eta_k)`` so that it is the mean's move in
units of the step's noise std (same kernels; the ``cpu`` preset uses it). ``diffwpo`` reuses
everything here and replaces (A3) by a Wasserstein policy-optimisation step.

Evaluation: the presets set ``eval_deterministic=false``, so each evaluation action is a sample
of the policy (a fresh prior draw through the K noisy kernels), as the DA-MDP code evaluates its
PPO and WPO agents (DiffSAC itself has no public code, hence no ``official`` preset). The
deterministic action runs the kernels' means from the prior's mean ``x_0 = 0``: a low-variance
readout, not the policy's mode, kept because the learning tests' budgets were measured with it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent.agents.common import (
    Agent,
    polyak_update,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    ChainTargetEntropy,
    DenoisingChain,
    Discount,
    Optimisers,
    TargetCritics,
    Temperature,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.diffusion.augmented import (
    AugmentedValue,
    DenoisingPolicy,
    entropy_estimate,
    prior_sample,
)
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffSACConfig(
    with_defaults(DenoisingChain, num_diffusion_steps=4),
    TargetCritics,
    ChainTargetEntropy,
    with_defaults(Temperature, init_temperature=0.1),
    Optimisers,
    Discount,
):
    """DiffSAC hyperparameters (SAC's defaults where they apply, the DA-MDP sampler's else)."""

    env_target: Literal["level", "chain"] = hp(
        "chain", "bootstrap Q(s, a) from a whole chain at s' or from U(s', x_1', 1)"
    )
    level_target: Literal["td", "chain"] = hp(
        "td", "regress U on the next level's target U or on the chain's own return"
    )


class AugmentedState(struct.PyTreeNode):
    actor_params: dict
    critic_params: dict  # {"env": Q(s, a) ensemble, "levels": U(s, x, m) ensemble}
    target_critic_params: dict
    log_temperature: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    improvement: Any  # what the policy-improvement rule keeps (DiffWPO's target actor, dual)
    step: jax.Array


class LevelCritic(nn.Module):
    """``num_critics`` copies of :class:`AugmentedValue`, ``U(s, x, m)``: ``[num_critics, ...]``."""

    hidden_dims: tuple[int, ...]
    num_steps: int
    prior_std: float
    num_critics: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, latent: jax.Array, level: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            AugmentedValue,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden_dims, self.num_steps, self.prior_std, "relu")(
            obs, latent, level
        )


class Context(NamedTuple):
    """What a policy-improvement rule gets from the agent it is plugged into."""

    policy: DenoisingPolicy
    soft_q: Callable[..., jax.Array]  # (critic_params, obs [B, d], x [L, B, A], first) -> [L, B]
    num_steps: int


class PolicyImprovement(NamedTuple):
    """A policy-improvement rule on the augmented MDP: its own state, its loss and its update.

    * ``init(actor_params) -> aux``
    * ``loss(actor_params, aux, critic_params, alpha, obs [B, d], chain, key) -> (loss, metrics)``
      where ``chain`` is a :class:`Chain` sampled by the current policy at ``obs``;
    * ``step(aux, new_actor_params, metrics) -> aux`` after each actor step.
    """

    init: Callable[[dict], Any]
    loss: Callable[..., tuple[jax.Array, Metrics]]
    step: Callable[[Any, dict, Metrics], Any]


def chain_soft_value(
    final_q: jax.Array, log_ratio: jax.Array, alpha: jax.Array, denoising_gamma: float
) -> jax.Array:
    """(A1)'s ``V'(s')`` from one chain sampled at ``s'``: ``gamma_d^(K-1) Q'(s', tanh(x_K')) -
    alpha sum_i gamma_d^i l_i'``, the discounted soft return of the augmented steps from
    ``(s', x_0', 0)`` to the next env transition.

    Args:
        final_q: ``[B]`` target ``Q'(s', tanh(x_K'))``; log_ratio: ``[K, B]`` the chain's
            ``l_0' .. l_{K-1}'``.
    """
    num_steps = log_ratio.shape[0]
    weights = denoising_gamma ** jnp.arange(num_steps, dtype=jnp.float32)
    return weights[-1] * final_q - alpha * jnp.tensordot(weights, log_ratio, axes=1)


def level_td_targets(
    next_values: jax.Array, log_ratio: jax.Array, alpha: jax.Array, denoising_gamma: float
) -> jax.Array:
    """(A2), ``level_target="td"``: ``y_m = gamma_d [U'(s, x_{m+1}, m+1) - alpha l_m]`` for the
    levels ``m = 1 .. K-1`` of one chain: no env reward and ``gamma_d``, not the env's
    ``gamma``, since no env transition happens between denoising levels.

    Args:
        next_values: ``[K-1, B]`` target values at levels ``2 .. K`` (``Q'`` at ``K``);
        log_ratio: ``[K, B]`` the chain's ``l_0 .. l_{K-1}`` (``l_0`` belongs to no level's
            target: the state ``(s, x_0, 0)`` is not a level of ``U``).
    """
    return denoising_gamma * (next_values - alpha * log_ratio[1:])


def level_return_targets(
    final_q: jax.Array, log_ratio: jax.Array, alpha: jax.Array, denoising_gamma: float
) -> jax.Array:
    """(A2), ``level_target="chain"``: the chain's own soft return from level ``m``,
    ``G_m = gamma_d (G_{m+1} - alpha l_m)`` with ``G_K = Q'(s, tanh(x_K))``, for
    ``m = 1 .. K-1``.

    Args:
        final_q: ``[B]``; log_ratio: ``[K, B]`` as in :func:`level_td_targets`.
    Returns:
        ``[K-1, B]``.
    """

    def back(g, level_log_ratio):
        g = denoising_gamma * (g - alpha * level_log_ratio)
        return g, g

    _, targets = jax.lax.scan(back, final_q, log_ratio[1:], reverse=True)
    return targets


def soft_actor_improvement(context: Context) -> PolicyImprovement:
    """(A3): the reparameterised SAC objective for every denoising kernel."""
    policy, num_steps = context.policy, context.num_steps

    def loss(actor_params, aux, critic_params, alpha, obs, chain, key):
        del aux
        latent = jax.lax.stop_gradient(chain.latents[:-1])  # x_j, [K, B, A]
        level = jnp.broadcast_to(jnp.arange(num_steps)[:, None], latent.shape[:-1])
        mean, std = policy.kernel(actor_params, obs, latent, level)
        x_next = mean + std * jax.random.normal(key, mean.shape)
        log_p_gen, log_p_ref = policy.log_densities(actor_params, obs, latent, level, x_next)
        q = context.soft_q(critic_params, obs, x_next, 1)
        loss = jnp.mean(alpha * (log_p_gen - log_p_ref) - q)
        return loss, {"actor_loss": loss}

    return PolicyImprovement(init=lambda params: {}, loss=loss, step=lambda aux, p, m: aux)


def build(
    config: DiffSACConfig,
    spec: EnvSpec,
    improvement: Callable[[Context], PolicyImprovement],
) -> Agent:
    """The augmented-MDP actor-critic of (A1), (A2), (A4) with the policy-improvement rule
    ``improvement``; ``make`` (DiffSAC) plugs in (A3)."""
    num_steps = config.num_diffusion_steps
    policy = config.denoising_policy(spec.action_dim)
    env_critic = config.critic()
    level_critic = LevelCritic(
        config.critic_hidden_dims, num_steps, config.prior_std, config.num_critics
    )
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(spec.action_dim)

    def soft_q(critic_params: dict, obs: jax.Array, x: jax.Array, first_level: int) -> jax.Array:
        """``min_i U_i(s, x[l], first_level + l)`` for ``obs [B, d]`` and latents ``x [L, B, A]``
        at consecutive levels; level K is the env critic on ``tanh(x)``. Returns ``[L, B]``."""
        num_levels = x.shape[0]
        num_u = min(num_levels, num_steps - first_level)  # levels below K
        values = []
        if num_u > 0:
            level = jnp.arange(first_level, first_level + num_u)[:, None]
            level = jnp.broadcast_to(level, (num_u, *x.shape[1:-1]))
            u = level_critic.apply(critic_params["levels"], obs, x[:num_u], level)
            values.append(u.min(axis=0))
        if num_u < num_levels:
            q = env_critic.apply(critic_params["env"], obs, jnp.tanh(x[-1]))
            values.append(q.min(axis=0)[None])
        return jnp.concatenate(values, axis=0)

    context = Context(policy, soft_q, num_steps)
    rule = improvement(context)

    def init(key: jax.Array) -> AugmentedState:
        actor_key, env_key, level_key = jax.random.split(key, 3)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, spec.action_dim), jnp.float32)
        actor_params = policy.init(actor_key, spec.obs_dim)
        critic_params = {
            "env": env_critic.init(env_key, obs, action),
            "levels": level_critic.init(level_key, obs, action, jnp.ones((1,), jnp.int32)),
        }
        log_temperature = config.initial_log_temperature()
        return AugmentedState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=critic_params,
            log_temperature=log_temperature,
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            improvement=rule.init(actor_params),
            step=jnp.zeros((), jnp.int32),
        )

    def critic_loss_fn(critic_params, state: AugmentedState, batch: Batch, chain, key):
        alpha = jnp.exp(state.log_temperature)
        target_params = state.target_critic_params
        if config.env_target == "level":
            # (A1): one kernel step at s' from a fresh prior latent, scored by the target U at
            # level 1 with the log-ratio correction.
            batch_size = batch.reward.shape[0]
            x0 = prior_sample(key, (1, batch_size, spec.action_dim), config.prior_std)
            level0 = jnp.zeros((1, batch_size), jnp.int32)
            mean, std = policy.kernel(state.actor_params, batch.next_obs, x0, level0)
            x1 = mean + std * jax.random.normal(jax.random.fold_in(key, 1), mean.shape)
            log_gen, log_ref = policy.log_densities(
                state.actor_params, batch.next_obs, x0, level0, x1
            )
            next_q = soft_q(target_params, batch.next_obs, x1, 1)[0]
            next_value = next_q - alpha * (log_gen - log_ref)[0]
        else:
            # A whole chain at s': gamma_d^(K-1) Q'(s', tanh(x_K')) - alpha sum_i gamma_d^i l_i',
            # the same expectation as (A1) with the chain's samples in place of U'.
            next_chain = policy.denoise(state.actor_params, batch.next_obs, key)
            next_q = soft_q(target_params, batch.next_obs, next_chain.latents[-1:], num_steps)[0]
            next_value = chain_soft_value(
                next_q, next_chain.log_ratio, alpha, config.denoising_gamma
            )
        env_target = td_target(batch.reward, batch.terminated, next_value, config.gamma)
        q = env_critic.apply(critic_params["env"], batch.obs, batch.action)
        env_loss = 0.5 * jnp.sum(jnp.mean((q - jax.lax.stop_gradient(env_target)) ** 2, -1))
        metrics = {"critic_loss": env_loss, "q_mean": q.mean()}
        if num_steps == 1:
            return env_loss, metrics
        # (A2): levels m = 1 .. K-1 along the current policy's chain at the replay states.
        latents = chain.latents[1:num_steps]  # x_m, [K-1, B, A]
        level = jnp.broadcast_to(jnp.arange(1, num_steps)[:, None], latents.shape[:-1])
        if config.level_target == "td":
            next_q = soft_q(target_params, batch.obs, chain.latents[2:], 2)
            level_target = level_td_targets(next_q, chain.log_ratio, alpha, config.denoising_gamma)
        else:
            final_q = soft_q(target_params, batch.obs, chain.latents[-1:], num_steps)[0]
            level_target = level_return_targets(
                final_q, chain.log_ratio, alpha, config.denoising_gamma
            )
        u = level_critic.apply(critic_params["levels"], batch.obs, latents, level)
        level_loss = 0.5 * jnp.sum(jnp.mean((u - jax.lax.stop_gradient(level_target)) ** 2, -1))
        metrics = {**metrics, "level_loss": level_loss, "u_mean": u.mean()}
        return env_loss + level_loss, metrics

    def gradient_step(
        state: AugmentedState, batch: Batch, key: jax.Array
    ) -> tuple[AugmentedState, Metrics]:
        chain_key, critic_key, actor_key = jax.random.split(key, 3)
        chain = jax.lax.stop_gradient(policy.denoise(state.actor_params, batch.obs, chain_key))
        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, chain, critic_key
        )
        updates, critic_opt_state = critic_optimizer.update(
            critic_grads, state.critic_opt_state, state.critic_params
        )
        critic_params = optax.apply_updates(state.critic_params, updates)
        target_critic_params = polyak_update(state.target_critic_params, critic_params, config.tau)

        alpha = jnp.exp(state.log_temperature)
        actor_grads, actor_metrics = jax.grad(rule.loss, has_aux=True)(
            state.actor_params,
            state.improvement,
            critic_params,
            alpha,
            batch.obs,
            chain,
            actor_key,
        )
        updates, actor_opt_state = actor_optimizer.update(
            actor_grads, state.actor_opt_state, state.actor_params
        )
        actor_params = optax.apply_updates(state.actor_params, updates)
        entropy = entropy_estimate(chain.log_ratio, num_steps)  # (A4)
        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            config.learns_temperature,
        )
        new_state = AugmentedState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            log_temperature=log_temperature,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            temperature_opt_state=temperature_opt_state,
            improvement=rule.step(state.improvement, actor_params, actor_metrics),
            step=state.step + 1,
        )
        metrics = {
            **critic_metrics,
            **actor_metrics,
            "entropy": entropy,
            "temperature": jnp.exp(log_temperature),
        }
        return new_state, metrics

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(
        state: AugmentedState, obs: jax.Array, key: jax.Array, deterministic: bool
    ) -> jax.Array:
        """All K denoising steps in-graph: ``obs [B, obs_dim]`` -> ``tanh(x_K) [B, A]``."""
        return policy.denoise(state.actor_params, obs, key, zero_noise=deterministic).action

    @jax.jit
    def update(state: AugmentedState, batch: Batch, key: jax.Array):
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: AugmentedState, batch: Batch, key: jax.Array):
        chain = policy.denoise(state.actor_params, batch.obs, key)
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, chain, key)

    def actor_step(state: AugmentedState, batch: Batch, key: jax.Array):
        chain = policy.denoise(state.actor_params, batch.obs, key)
        return jax.grad(rule.loss, has_aux=True)(
            state.actor_params,
            state.improvement,
            state.critic_params,
            jnp.exp(state.log_temperature),
            batch.obs,
            chain,
            key,
        )

    phases = {"critic step": jax.jit(critic_step), "actor step": jax.jit(actor_step)}
    return Agent(init=init, act=act, update=update, phases=phases)


def make(config: DiffSACConfig, spec: EnvSpec) -> Agent:
    """Build DiffSAC's pure ``init`` / ``act`` / ``update`` for one env."""
    return build(config, spec, soft_actor_improvement)


CPU_PRESET = Preset(
    {
        "actor_hidden_dims": (128, 128),
        "critic_hidden_dims": (128, 128),
        "batch_size": 128,
        "control": "noise",
        "learning_starts": 1_000,
        "eval_every": 1_000,
        "eval_deterministic": False,
    },
    "Narrower networks and batch for a 2-core CPU, the network's output in noise units "
    "(docs/benchmarks.md, section DMERL); sampled actions in evaluation, as the DA-MDP code.",
)

PRESETS = {
    "paper": Preset(
        {"num_diffusion_steps": 8, "learning_starts": 10_000, "eval_deterministic": False},
        "K = 8 and the DA-MDP sampler (prior std 2.5, linear steps down to 0.05); SAC's "
        "networks, rates and replay (Haarnoja et al. 2018b, Table 1); sampled actions in "
        "evaluation, as the DA-MDP code.",
        suite="gym",
    ),
    "cpu": CPU_PRESET,
}
