"""DiffPPO: PPO on the diffusion-augmented MDP (DMERL, Sanokowski, Patil, Knoll,
arXiv:2512.02019; "DA-MDP: PPO" in its later version).

The policy is the K-step Gaussian denoising chain of :mod:`diffmaxent.diffusion.augmented`;
every env step is K augmented transitions ``(s, x_k, k) -> x_{k+1}``, the last of which executes
``tanh(x_K)`` in the env. PPO then runs on augmented transitions:

* **Ratio** on one Gaussian denoising kernel: ``rho = p_gen,new(x_{k+1} | x_k, s, k) /
  p_gen,old(...)``, one network evaluation per transition (no chain is re-run).
* **Soft reward** (the bound's per-step decomposition; ``l_k = log p_gen - log p_ref``):
  ``paper`` (default): ``R = r 1[k = K-1] - alpha l_k`` on the step itself, so GAE's advantage
  already contains the step's own entropy term; the released DA-MDP PPO trainer does the same
  at its default fixed temperature. ``official``: ``R = r - gamma alpha l_{k+1}`` and the
  *entropy-augmented advantage* ``A - alpha (l_k - mean l)``, the placement of the code's helper
  functions (``learning_DA_MDP_PPO.train_step_env`` and ``actor_loss_fn``).
* **GAE over augmented steps** with separate discounts: ``gamma`` / ``gae_lambda`` across the env
  transition, ``denoising_gamma`` / ``denoising_lambda`` between denoising steps. The value is a
  *diffusion value function* ``V(s, x_k, k)``; a finished env step bootstraps from
  ``V(s', x_0', 0)``.
* **Temperature**, both options of the sources: ``temperature=auto`` learns ``alpha`` towards a
  target entropy on the estimate ``H = -K mean(l)`` (the official default, SAC's Lagrangian rule,
  one Adam step per minibatch), or a fixed ``temperature`` annealed exponentially,
  ``alpha(n) = alpha_0 (alpha_end / alpha_0)^{min(n / anneal_steps, 1)}`` over ``n`` env steps
  (the code's ``use_temperature_decay``; our reading of the paper's "variational annealing",
  whose text we could not read). ``anneal_steps = 0`` keeps it constant.

Losses: the clipped surrogate is PPO's eq. 7 (Schulman et al. 2017) on ``rho``; the value loss is
``0.5 (V - G)^2``, optionally clipped as in the code.

Evaluation, as the DA-MDP code's: the presets set ``eval_deterministic=false``, so each
evaluation action is a sample of the policy, a fresh prior draw ``x_0`` through the K noisy
kernels. The deterministic action (``eval_deterministic=true``) runs the kernels' means from
the prior's mean ``x_0 = 0``: a low-variance readout, not the policy's mode, kept because the
learning tests' budgets were measured with it.

Differences from the code (the ``official`` preset sets what of its run config is expressible
here): the step sizes are fixed, not learned (so ``p_ref`` has no parameters and ``log p_ref``
is stored with the rollout); the critic is an MLP regression, not a categorical one with
auxiliary losses; advantages are centred and scaled, not only centred; a truncated transition
bootstraps from its real next state instead of leaving the losses; no adaptive learning rate on
the KL.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent.agents.common import temperature_step
from diffmaxent.agents.groups import (
    ChainTargetEntropy,
    CriticNetwork,
    DenoisingChain,
    Discount,
    Optimisers,
    PPOCore,
    Temperature,
)
from diffmaxent.agents.onpolicy import (
    ObsNorm,
    OnPolicyAgent,
    Rollout,
    explained_variance,
    gae,
    minibatch_epochs,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.diffusion.augmented import (
    AugmentedValue,
    entropy_estimate,
    expand,
    prior_sample,
    soft_rewards,
    step_discounts,
)
from diffmaxent.envs.spec import EnvSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffPPOConfig(
    with_defaults(DenoisingChain, actor_hidden_dims=(64, 64), num_diffusion_steps=4),
    with_defaults(CriticNetwork, critic_hidden_dims=(64, 64)),
    ChainTargetEntropy,
    with_defaults(Temperature, init_temperature=0.01, temperature_lr=3e-3),
    with_defaults(PPOCore, batch_size=512),
    Optimisers,
    Discount,
):
    """DiffPPO hyperparameters (defaults: a CPU-sized version of the DA-MDP PPO settings)."""

    denoising_lambda: float = hp(1.0, "GAE lambda between denoising steps", low=0.0, high=1.0)
    clip_value: bool = hp(False, "clip the value update as the official code does")
    anneal_steps: int = hp(0, "env steps to anneal a fixed alpha over (0: constant)", low=0)
    final_temperature: float = hp(1e-5, "alpha at the end of annealing", low=0.0, low_open=True)
    soft_reward: Literal["paper", "official"] = hp("paper", "where the entropy term sits")


class DiffPPOState(struct.PyTreeNode):
    actor_params: dict
    critic_params: dict
    log_temperature: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    obs_norm: ObsNorm
    env_steps: jax.Array  # env steps seen by `update` (drives annealing)
    step: jax.Array


def make(config: DiffPPOConfig, spec: EnvSpec) -> OnPolicyAgent:
    """Build DiffPPO's pure ``init`` / ``act`` / ``collect`` / ``update`` for one env."""
    num_steps = config.num_diffusion_steps
    policy = config.denoising_policy(spec.action_dim)
    critic = AugmentedValue(config.critic_hidden_dims, num_steps, config.prior_std)
    actor_optimizer = config.clip_gradients(config.actor_optimizer())
    critic_optimizer = config.clip_gradients(config.critic_optimizer())
    temperature_optimizer = config.temperature_optimizer()
    learn_temperature = config.learns_temperature
    target_entropy = config.target_entropy_value(spec.action_dim)

    def init(key: jax.Array) -> DiffPPOState:
        actor_key, critic_key = jax.random.split(key)
        actor_params = policy.init(actor_key, spec.obs_dim)
        critic_params = critic.init(
            critic_key,
            jnp.zeros((1, spec.obs_dim)),
            jnp.zeros((1, spec.action_dim)),
            jnp.zeros((1,), jnp.int32),
        )
        log_temperature = config.initial_log_temperature()
        return DiffPPOState(
            actor_params=actor_params,
            critic_params=critic_params,
            log_temperature=log_temperature,
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            obs_norm=ObsNorm.create(spec.obs_dim),
            env_steps=jnp.zeros((), jnp.float32),
            step=jnp.zeros((), jnp.int32),
        )

    def temperature(state: DiffPPOState) -> jax.Array:
        alpha = jnp.exp(state.log_temperature)
        if learn_temperature or config.anneal_steps == 0:
            return alpha
        progress = jnp.minimum(state.env_steps / config.anneal_steps, 1.0)
        return alpha * (config.final_temperature / alpha) ** progress

    def loss_fn(params, batch, advantage):
        """Clipped surrogate (PPO eq. 7) on one denoising kernel, plus the value regression."""
        actor_params, critic_params = params
        log_p_gen, _ = policy.log_densities(
            actor_params, batch["obs"], batch["latent"], batch["step"], batch["next_latent"]
        )
        ratio = jnp.exp(log_p_gen - batch["log_p_gen"])
        clipped = jnp.clip(ratio, 1.0 - config.clip, 1.0 + config.clip)
        policy_loss = -jnp.mean(jnp.minimum(ratio * advantage, clipped * advantage))
        v = critic.apply(critic_params, batch["obs"], batch["latent"], batch["step"])
        value_loss = (v - batch["return"]) ** 2
        if config.clip_value:
            v_clipped = batch["value"] + jnp.clip(v - batch["value"], -config.clip, config.clip)
            value_loss = jnp.maximum(value_loss, (v_clipped - batch["return"]) ** 2)
        value_loss = 0.5 * jnp.mean(value_loss)
        metrics = {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "approx_kl": jnp.mean((ratio - 1.0) - jnp.log(ratio)),
            "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > config.clip),
        }
        return policy_loss + value_loss, (metrics, log_p_gen)

    def gradient_step(state: DiffPPOState, batch: dict, key: jax.Array):
        del key
        advantage = batch["advantage"]
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        params = (state.actor_params, state.critic_params)
        grads, (metrics, log_p_gen) = jax.grad(loss_fn, has_aux=True)(params, batch, advantage)
        updates, actor_opt_state = actor_optimizer.update(
            grads[0], state.actor_opt_state, state.actor_params
        )
        updates_c, critic_opt_state = critic_optimizer.update(
            grads[1], state.critic_opt_state, state.critic_params
        )
        entropy = entropy_estimate(jax.lax.stop_gradient(log_p_gen) - batch["log_p_ref"], num_steps)
        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            learn_temperature,
        )
        new_state = state.replace(
            actor_params=optax.apply_updates(state.actor_params, updates),
            critic_params=optax.apply_updates(state.critic_params, updates_c),
            log_temperature=log_temperature,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            temperature_opt_state=temperature_opt_state,
            step=state.step + 1,
        )
        return new_state, metrics

    @jax.jit
    def collect(state: DiffPPOState, obs: jax.Array, key: jax.Array):
        """All K denoising steps of ``B`` envs in one call: action ``[B, A]`` and the chain
        (latents ``[K + 1, B, A]``, log-densities ``[K, B]``)."""
        chain = policy.denoise(
            state.actor_params, state.obs_norm.normalize(obs, config.normalize_obs), key
        )
        return chain.action, chain._asdict()

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: DiffPPOState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        obs = state.obs_norm.normalize(obs, config.normalize_obs)
        return policy.denoise(state.actor_params, obs, key, zero_noise=deterministic).action

    @jax.jit
    def update(state: DiffPPOState, rollout: Rollout, key: jax.Array):
        boot_key, sample_key, epoch_key = jax.random.split(key, 3)
        obs = state.obs_norm.normalize(rollout.obs, config.normalize_obs)
        next_obs = state.obs_norm.normalize(rollout.next_obs, config.normalize_obs)
        chain = rollout.extras
        num_env_steps, batch = rollout.reward.shape
        aug = expand(
            obs,
            chain["latents"],
            chain["log_p_gen"],
            chain["log_p_ref"],
            config.reward_scale * rollout.reward,
            rollout.terminated,
            rollout.truncated,
        )
        values = critic.apply(state.critic_params, aug.obs, aug.latent, aug.step)
        # The state after env step t is (s', x_0', 0); x_0' is the next chain's prior draw
        # (any prior draw has the same law, so a fresh one after the rollout's end).
        fresh = prior_sample(boot_key, (1, batch, spec.action_dim), config.prior_std)
        boot_latent = jnp.concatenate([chain["latents"][1:, 0], fresh], axis=0)
        zero = jnp.zeros((num_env_steps, batch), jnp.int32)
        boot_values = critic.apply(state.critic_params, next_obs, boot_latent, zero)
        next_values = jnp.concatenate(
            [values.reshape(num_env_steps, num_steps, batch)[:, 1:], boot_values[:, None]],
            axis=1,
        ).reshape(values.shape)

        alpha = jax.lax.stop_gradient(temperature(state))
        log_ratio = aug.log_p_gen - aug.log_p_ref
        discount = step_discounts(aug.is_last, config.gamma, config.denoising_gamma)
        lam = jnp.where(aug.is_last > 0, config.gae_lambda, config.denoising_lambda)
        if config.soft_reward == "official":
            # l at the next augmented state: the chain's own next step inside an env step;
            # after an env step one fresh kernel sample at the bootstrap state.
            boot_mean, boot_std = policy.kernel(state.actor_params, next_obs, boot_latent, zero)
            boot_next = boot_mean + boot_std * jax.random.normal(sample_key, boot_mean.shape)
            boot_log_gen, boot_log_ref = policy.log_densities(
                state.actor_params, next_obs, boot_latent, zero, boot_next
            )
            grid = log_ratio.reshape(num_env_steps, num_steps, batch)
            next_log_ratio = jnp.concatenate(
                [grid[:, 1:], (boot_log_gen - boot_log_ref)[:, None]], axis=1
            ).reshape(log_ratio.shape)
            rewards = soft_rewards(
                aug.reward,
                log_ratio,
                alpha,
                mode="official",
                next_log_ratio=(1.0 - aug.terminated) * next_log_ratio,
                discount=discount,
            )
        else:
            rewards = soft_rewards(aug.reward, log_ratio, alpha, mode="paper")
        done = jnp.maximum(aug.terminated, aug.truncated)
        advantage, returns = gae(rewards, values, next_values, discount, lam, aug.terminated, done)
        if config.soft_reward == "official":
            advantage = advantage - alpha * (log_ratio - log_ratio.mean())

        data = {
            "obs": aug.obs,
            "latent": aug.latent,
            "step": aug.step,
            "next_latent": aug.next_latent,
            "log_p_gen": aug.log_p_gen,
            "log_p_ref": aug.log_p_ref,
            "advantage": advantage,
            "return": returns,
            "value": values,
        }
        data = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), data)
        state, metrics = minibatch_epochs(
            gradient_step, state, data, epoch_key, config.epochs, config.batch_size
        )
        state = state.replace(
            obs_norm=state.obs_norm.update(rollout.obs),
            env_steps=state.env_steps + num_env_steps * batch,
        )
        metrics["explained_variance"] = explained_variance(values, returns)
        metrics["entropy"] = entropy_estimate(log_ratio, num_steps)
        metrics["temperature"] = temperature(state)
        return state, metrics

    return OnPolicyAgent(init=init, act=act, collect=collect, update=update)


# DA-MDP PPO's base config (config/DA_MDP_PPO/default.yaml), CPU-sized.
PAPER = {
    "num_diffusion_steps": 8,
    "gamma": 0.999,
    "denoising_gamma": 0.999,
    "gae_lambda": 0.98,
    "denoising_lambda": 0.98,
    "actor_lr": 1e-4,
    "critic_lr": 1e-4,
    "epochs": 16,
    "batch_size": 512,
    "actor_hidden_dims": (256, 256, 256, 256),
    "critic_hidden_dims": (512, 512),
    "init_temperature": 0.002,
    "clip_value": True,
    "num_envs": 16,
    "rollout_steps": 128,
    "eval_deterministic": False,
}

PRESETS = {
    "paper": Preset(
        PAPER,
        "DA-MDP PPO's base config (it runs DeepMind Control on MJX): K = 8, prior std 2.5, "
        "linear steps down to 0.05, gamma / lambda 0.999 / 0.98 per augmented step, lr 1e-4, "
        "16 epochs, entropy target 3 |A| below the prior, alpha from 0.002, clipped value loss, "
        "4 x 256 denoiser, sampled actions in evaluation; its 2048 envs x 128 steps in 128 "
        "minibatches become 16 envs x 128 steps and minibatches of 512 on a CPU.",
        suite="dmc",
    ),
    "official": Preset(
        {
            **PAPER,
            "prior_std": 3.0,
            "step_size": 0.5,
            "min_step_fraction": 0.17,
            "temperature": 2e-4,
            "epochs": 12,
            "clip_value": False,
        },
        "paper plus the layer the DA-MDP PPO run applies over its base config "
        "(config/DA_MDP_PPO/overrides/default.yaml): prior_std 3, step_size 0.5 (dt 0.125 / "
        "friction 0.25), min_step_fraction 0.17, a fixed temperature 2e-4 (its entropy_coef: "
        "both config layers leave off the temperature Lagrangian whose start and target paper "
        "uses), 12 epochs, clip_value off (its critic is categorical and unclipped). Not "
        "reproduced: learned step sizes and friction, the categorical HL-Gauss critic and its "
        "auxiliary losses, advantages centred but not scaled, truncated transitions left out "
        "of the losses, 2048 envs in 64 minibatches.",
        suite="dmc",
    ),
    "mjx": Preset(
        {**PAPER, "num_envs": 2048, "rollout_steps": 128, "batch_size": 2048},
        "paper at the DA-MDP code's own scale on MJX: 2048 envs x 128 steps per update in 128 "
        "minibatches x 16 epochs (2,048 gradient steps per 262,144 env steps), on the device "
        "loop. Its learned step sizes are not reproduced (paper's fixed linear steps).",
        suite="mjx",
    ),
    "cpu": Preset(
        {
            "gamma": 0.95,
            "actor_lr": 1e-3,
            "critic_lr": 1e-3,
            "reward_scale": 0.1,
            "num_envs": 8,
            "rollout_steps": 256,
            "eval_every": 20_000,
            "eval_deterministic": False,
        },
        "Tuned on Pendulum-v1 like ppo's cpu preset (docs/benchmarks.md, section DMERL); "
        "sampled actions in evaluation, as the DA-MDP code.",
    ),
}
