"""DACER: Diffusion Actor-Critic with Entropy Regulator (Wang et al., NeurIPS 2024).

The reverse diffusion chain is the policy, used as a reparameterised sampler:

* acting: ``a = clip(chain(s, z) + lambda alpha eps, -1, 1)`` with ``eps ~ N(0, I)``: the action
  the reverse chain denoises from ``z ~ N(0, I)``, plus Gaussian exploration noise whose std is the
  learned ``alpha`` times a fixed ``noise_scale`` ``lambda``;
* policy evaluation: twin critics with Polyak-averaged target copies and the clipped double-Q
  target ``r + gamma min_j Q'_j(s', a')``, ``a'`` drawn as above. The entropy does not enter the
  target: DACER regulates exploration through the injected noise only;
* policy improvement: ``min_j Q_j(s, a_theta(s))`` is maximised by backpropagating through every
  denoising step of the chain (and the added noise), as DDPG/SAC do through a single network;
* entropy regulator: the policy's entropy has no closed form, so it is estimated by fitting a
  Gaussian mixture (EM) to ``entropy_samples`` actions drawn per state and taking
  ``H ~= -sum_k w_k log w_k + sum_k w_k H[N(mu_k, Sigma_k)]`` (the entropy of the latent-variable
  model, an upper bound of the mixture's own entropy); ``log alpha`` then takes SAC's step
  ``loss = log(alpha) (H - H_target)``: the noise shrinks when the estimate is above
  ``target_entropy`` and grows when below.

The paper's text was not available to this implementation, so no equation numbers are cited; the
defaults below are those of the official code (happy-yan/DACER-Diffusion-with-Online-RL, the
``relax`` framework), which the paper's experiments ran, and this list says where the library's
version departs from it:

* the code estimates the entropy and steps ``log alpha`` once every 10,000 updates
  (``alpha_update_every``), from 200 actions per state (``entropy_samples``) for every state of
  the batch (``entropy_states``), with a 3-component full-covariance mixture
  (``gmm_components``); it fits with scikit-learn (k-means start, up to 100 EM iterations) outside
  the jitted update. Here the fit is :func:`gmm_entropy`, EM in JAX with ``gmm_iterations``
  iterations from k-means++ seeds, inside the jitted update;
* the code fits the mixture to clipped actions: actions at the box edge are point masses, which
  the fit gives near-zero covariances and very negative entropies, so the estimate falls as the
  noise grows and alpha can run away (on Pendulum-v1 it reached 3000 by 10k steps in seeds 1 and
  2 and learning collapsed). ``entropy_before_clip=true`` (the ``cpu`` preset) fits the actions
  before the clip, whose entropy rises with the noise;
* ``alpha`` starts at 3 (``init_temperature``), its Adam learning rate is 0.03
  (``temperature_lr``), ``target_entropy`` is ``-0.9 |A|``, ``noise_scale`` is 0.1 (0.15 on
  Humanoid, the ``paper`` preset's per-task entry);
* actor and critics: Adam at 1e-4, three hidden layers of 256 with mish for both; the actor and the
  target critics update every second step (``policy_delay=2``); rewards are multiplied by 0.2
  (``reward_scale``); the actor loss uses the critics from before the step's critic update;
* the code's critics are DSAC-T's distributional ones (a mean and a std per critic, the smaller
  mean's sample in the target, a variance-adaptive loss); this implementation uses plain twin
  critics with clipped double-Q and a squared loss (the code's critic is not available here);
* the code's chain is a 20-step DDPM on a discrete VP beta schedule (beta from 0.1 to 10) with the
  posterior variance and the clean action clipped to [-1, 1] per step, and a 16-dim sinusoidal
  time embedding. The default chain here is the library core's DDPM ancestral sampler
  (``sampler=ddpm``, clipped ``x0``, noise variance beta) on its continuous cosine VP schedule
  (``chain_schedule=cosine``), with the library's ``NoiseNet``; ``chain_schedule=vp`` runs it on
  the code's discrete VP grid instead; ``ddim`` and ``dpm_solver_2m`` are other samplers;
* deterministic actions (evaluation) are the chain's output without the added noise, as in the
  code (the chain itself stays stochastic);
* MaxEntDP's re-implementation (Dong et al. 2025, Table B2) ran DACER at learning rate 3e-4 with a
  batch of 256; the code's run script uses 1e-4, the default here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent import diffusion
from diffmaxent.agents.common import (
    Agent,
    apply_gradients,
    polyak_update,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    DiffusionChain,
    Discount,
    Optimisers,
    TargetCritics,
    TargetEntropy,
    Temperature,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.diffusion import NoiseNet
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.types import Batch, Metrics

# scikit-learn's default covariance regulariser (reg_covar), which the official fit uses.
GMM_REG_COVAR = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class DACERTargetEntropy(TargetEntropy):
    """The official code's entropy target: ``-0.9 |A|``."""

    AUTO_ENTROPY_PER_DIM: ClassVar[float] = -0.9


@dataclasses.dataclass(frozen=True, kw_only=True)
class DACERConfig(
    with_defaults(DiffusionChain, actor_hidden_dims=(256, 256, 256)),
    with_defaults(TargetCritics, critic_hidden_dims=(256, 256, 256)),
    DACERTargetEntropy,
    with_defaults(Temperature, init_temperature=3.0, temperature_lr=3e-2),
    with_defaults(Optimisers, actor_lr=1e-4, critic_lr=1e-4),
    Discount,
):
    """DACER hyperparameters; defaults are the official code's (the module docstring)."""

    noise_scale: float = hp(
        0.1, "lambda: std of the added action noise per unit of alpha", low=0.0, low_open=True
    )
    sampler: Literal["ddim", "ddpm", "dpm_solver_2m"] = hp(
        "ddpm", "sampler: ddim (probability-flow ODE), ddpm (stochastic, x0 clipped), dpm_solver_2m"
    )
    chain_schedule: Literal["cosine", "vp"] = hp(
        "cosine", "chain's noise levels: cosine (library core) or vp (code: discrete, beta 0.1-10)"
    )
    activation: str = hp("mish", "activation of the noise network and the critics")
    layer_norm: bool = hp(False, "LayerNorm in the noise network (official: none)")
    policy_delay: int = hp(2, "critic steps per actor step", low=1)
    reward_scale: float = hp(0.2, "multiplies env rewards", low=0.0, low_open=True)
    alpha_update_every: int = hp(
        10_000, "updates between entropy estimates (and alpha steps)", low=1
    )
    entropy_states: int = hp(256, "batch states whose action entropy is estimated", low=1)
    entropy_samples: int = hp(200, "actions sampled per state for the GMM fit", low=2)
    gmm_components: int = hp(3, "Gaussian mixture components of the entropy estimate", low=1)
    gmm_iterations: int = hp(50, "EM iterations of the mixture fit", low=1)
    entropy_before_clip: bool = hp(
        False, "fit the GMM to actions before the box clip (the code fits clipped ones)"
    )


class DACERState(struct.PyTreeNode):
    """Actor, twin critics with targets, ``log alpha``, and the latest entropy estimate and actor
    loss (both refreshed only on their own schedules, reported in between)."""

    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_temperature: jax.Array
    entropy: jax.Array
    actor_loss: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    step: jax.Array


# --- the entropy estimate: a Gaussian mixture fitted by EM ---------------------------------------


def gaussian_log_densities(
    samples: jax.Array, means: jax.Array, covariances: jax.Array
) -> jax.Array:
    """``log N(x_n | mu_k, Sigma_k)``: samples ``[N, d]``, means ``[K, d]``, covariances
    ``[K, d, d]`` -> ``[N, K]``."""
    dim = samples.shape[-1]
    cholesky = jnp.linalg.cholesky(covariances)  # [K, d, d]
    centred = samples[None] - means[:, None]  # [K, N, d]
    whitened = jax.scipy.linalg.solve_triangular(
        cholesky, jnp.swapaxes(centred, 1, 2), lower=True
    )  # [K, d, N]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(cholesky, axis1=1, axis2=2)), axis=-1)
    mahalanobis = jnp.sum(whitened**2, axis=1)  # [K, N]
    log_density = -0.5 * (mahalanobis + log_det[:, None] + dim * math.log(2.0 * math.pi))
    return log_density.T


def kmeans_plus_plus_labels(samples: jax.Array, key: jax.Array, num_components: int) -> jax.Array:
    """Hard initial responsibilities ``[N, K]``: each sample's nearest of ``K`` centres seeded by
    k-means++ (every next centre drawn with probability proportional to the squared distance to
    the nearest one so far), which puts centres in different clusters where EM from centres in the
    same cluster would stay symmetric."""
    first_key, *next_keys = jax.random.split(key, num_components)
    centres = jnp.broadcast_to(
        samples[jax.random.randint(first_key, (), 0, len(samples))],
        (
            num_components,
            samples.shape[-1],
        ),
    )
    squared_distance = jnp.sum((samples - centres[0]) ** 2, axis=-1)
    for index, centre_key in enumerate(next_keys, start=1):
        choice = jax.random.categorical(centre_key, jnp.log(squared_distance + 1e-30))
        centres = centres.at[index].set(samples[choice])
        squared_distance = jnp.minimum(
            squared_distance, jnp.sum((samples - centres[index]) ** 2, axis=-1)
        )
    nearest = jnp.argmin(jnp.sum((samples[:, None] - centres[None]) ** 2, axis=-1), axis=-1)
    return jax.nn.one_hot(nearest, num_components, dtype=samples.dtype)


def gaussian_mixture_fit(
    samples: jax.Array, key: jax.Array, num_components: int, num_iterations: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Maximum-likelihood full-covariance Gaussian mixture by EM: ``samples [N, d]`` ->
    ``(weights [K], means [K, d], covariances [K, d, d])``.

    Like scikit-learn's fit, it starts from hard k-means-style responsibilities (here k-means++
    seeds without Lloyd iterations) and adds ``GMM_REG_COVAR I`` to every covariance so none
    collapses onto a point (actions clipped to the box edge are such points)."""
    num_samples, dim = samples.shape
    regulariser = GMM_REG_COVAR * jnp.eye(dim)

    def maximise(responsibilities):
        counts = responsibilities.sum(axis=0) + 10.0 * jnp.finfo(samples.dtype).eps  # [K]
        means = responsibilities.T @ samples / counts[:, None]
        centred = samples[None] - means[:, None]  # [K, N, d]
        covariances = (
            jnp.einsum("nk,kni,knj->kij", responsibilities, centred, centred)
            / counts[:, None, None]
            + regulariser
        )
        return jnp.log(counts / num_samples), means, covariances

    def em_step(_, responsibilities):
        log_weights, means, covariances = maximise(responsibilities)
        joint = log_weights + gaussian_log_densities(samples, means, covariances)  # [N, K]
        return jnp.exp(joint - jax.nn.logsumexp(joint, axis=-1, keepdims=True))

    responsibilities = jax.lax.fori_loop(
        0, num_iterations, em_step, kmeans_plus_plus_labels(samples, key, num_components)
    )
    log_weights, means, covariances = maximise(responsibilities)
    return jnp.exp(log_weights), means, covariances


def gmm_entropy(
    samples: jax.Array, key: jax.Array, num_components: int = 3, num_iterations: int = 50
) -> jax.Array:
    """DACER's entropy estimate of the distribution of ``samples [N, d]``: fit a Gaussian
    mixture and return ``-sum_k w_k log w_k + sum_k w_k (d/2 (1 + log 2 pi) + 1/2 log|Sigma_k|)``,
    a scalar (exact for one Gaussian; ``log K`` plus the component entropy for ``K``
    well-separated equal components)."""
    weights, _, covariances = gaussian_mixture_fit(samples, key, num_components, num_iterations)
    dim = samples.shape[-1]
    _, log_det = jnp.linalg.slogdet(covariances)
    component_entropy = 0.5 * dim * (1.0 + math.log(2.0 * math.pi)) + 0.5 * log_det
    return -jnp.sum(jax.scipy.special.xlogy(weights, weights)) + jnp.sum(
        weights * component_entropy
    )


# --- the policy: the reverse chain plus alpha-scaled noise ----------------------------------------


@dataclasses.dataclass(frozen=True)
class DiffusionPolicy:
    """The reverse chain of ``noise_net`` as a reparameterised policy with added noise."""

    noise_net: NoiseNet
    sampler: str
    num_steps: int
    noise_scale: float
    spacing: str | None = None

    def sample(
        self,
        params,
        obs: jax.Array,
        key: jax.Array,
        alpha: jax.Array,
        num_per_state: int | None = None,
        clip: bool = True,
    ) -> jax.Array:
        """``clip(chain(s, z) + noise_scale * alpha * eps, -1, 1)``, differentiable in
        ``params`` through every denoising step: obs ``[B, obs_dim]`` -> ``[B, A]`` (or
        ``[B, num_per_state, A]``). ``alpha = 0`` gives the chain's own action; ``clip=False``
        returns the action before the clip to the box."""
        chain_key, noise_key = jax.random.split(key)
        extra = () if num_per_state is None else (num_per_state,)
        shape = (*obs.shape[:-1], *extra, self.noise_net.action_dim)
        action = diffusion.sample(
            lambda noisy_action, log_snr: self.noise_net.apply(params, obs, noisy_action, log_snr),
            chain_key,
            shape,
            sampler=self.sampler,
            num_steps=self.num_steps,
            spacing=self.spacing,
        )
        action = action + self.noise_scale * alpha * jax.random.normal(noise_key, shape)
        return jnp.clip(action, -1.0, 1.0) if clip else action


def policy_loss(q: jax.Array) -> jax.Array:
    """``-mean_B min_j Q_j(s, a_theta(s))``: ``q [B]`` is the critics' min at the policy's
    actions, whose gradient reaches the noise network through the whole chain."""
    return -jnp.mean(q)


def make(config: DACERConfig, spec: EnvSpec) -> Agent:
    """Build DACER's pure ``init`` / ``act`` / ``update`` for one env."""
    action_dim = spec.action_dim
    noise_net = NoiseNet(
        action_dim,
        config.actor_hidden_dims,
        activation=config.activation,
        layer_norm=config.layer_norm,
    )
    # The cosine schedule is each sampler's own default grid; vp is the code's discrete one.
    spacing = "vp" if config.chain_schedule == "vp" else None
    policy = DiffusionPolicy(
        noise_net, config.sampler, config.num_diffusion_steps, config.noise_scale, spacing
    )
    critic = config.critic().clone(activation=config.activation)
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(action_dim)

    def init(key: jax.Array) -> DACERState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params = noise_net.init(actor_key, obs, action, jnp.zeros((1,)))
        critic_params = critic.init(critic_key, obs, action)
        log_temperature = config.initial_log_temperature()
        return DACERState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=critic_params,
            log_temperature=log_temperature,
            entropy=jnp.zeros(()),
            actor_loss=jnp.zeros(()),
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            step=jnp.zeros((), jnp.int32),
        )

    def critic_loss_fn(critic_params, state: DACERState, batch: Batch, key: jax.Array):
        """Clipped double-Q regression onto ``r + gamma min_j Q'_j(s', a')`` (no entropy term)."""
        next_action = policy.sample(
            state.actor_params, batch.next_obs, key, jnp.exp(state.log_temperature)
        )
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(0)
        target = td_target(
            config.reward_scale * batch.reward, batch.terminated, next_q, config.gamma
        )
        q = critic.apply(critic_params, batch.obs, batch.action)
        loss = 0.5 * jnp.sum(jnp.mean((q - jax.lax.stop_gradient(target)) ** 2, axis=-1))
        return loss, {"critic_loss": loss, "q_mean": q.mean()}

    def actor_loss_fn(actor_params, critic_params, log_temperature, obs, key):
        """Backpropagate ``min_j Q_j`` through the reverse chain (``alpha`` held fixed)."""
        action = policy.sample(actor_params, obs, key, jnp.exp(log_temperature))
        return policy_loss(critic.apply(critic_params, obs, action).min(0))

    def estimate_entropy(state: DACERState, obs: jax.Array, key: jax.Array) -> jax.Array:
        """Mean over ``entropy_states`` states of the GMM entropy of ``entropy_samples`` actions
        of the acting policy (added noise included; clipping unless ``entropy_before_clip``)."""
        sample_key, fit_key = jax.random.split(key)
        obs = obs[: config.entropy_states]
        actions = policy.sample(
            state.actor_params,
            obs,
            sample_key,
            jnp.exp(state.log_temperature),
            config.entropy_samples,
            clip=not config.entropy_before_clip,
        )
        fit = functools.partial(
            gmm_entropy,
            num_components=config.gmm_components,
            num_iterations=config.gmm_iterations,
        )
        fit_keys = jax.random.split(fit_key, obs.shape[0])
        return jax.lax.stop_gradient(jax.vmap(fit)(actions, fit_keys).mean())

    def regulate_entropy(state: DACERState, obs: jax.Array, key: jax.Array):
        """A fresh entropy estimate and one step of ``log alpha`` towards ``target_entropy``."""
        entropy = estimate_entropy(state, obs, key)
        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            config.learns_temperature,
        )
        return entropy, log_temperature, temperature_opt_state

    def gradient_step(state: DACERState, batch: Batch, key: jax.Array):
        critic_key, actor_key, entropy_key = jax.random.split(key, 3)
        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, critic_key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )

        def actor_and_target_step(_):
            loss, grads = jax.value_and_grad(actor_loss_fn)(
                state.actor_params,
                state.critic_params,
                state.log_temperature,
                batch.obs,
                actor_key,
            )
            actor_params, actor_opt_state = apply_gradients(
                actor_optimizer, state.actor_params, state.actor_opt_state, grads
            )
            target = polyak_update(state.target_critic_params, critic_params, config.tau)
            return actor_params, actor_opt_state, target, loss

        def keep(_):
            return (
                state.actor_params,
                state.actor_opt_state,
                state.target_critic_params,
                state.actor_loss,
            )

        actor_params, actor_opt_state, target_critic_params, actor_loss = jax.lax.cond(
            state.step % config.policy_delay == 0, actor_and_target_step, keep, None
        )
        entropy, log_temperature, temperature_opt_state = jax.lax.cond(
            state.step % config.alpha_update_every == 0,
            lambda: regulate_entropy(state, batch.obs, entropy_key),
            lambda: (state.entropy, state.log_temperature, state.temperature_opt_state),
        )
        new_state = state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            log_temperature=log_temperature,
            entropy=entropy,
            actor_loss=actor_loss,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            temperature_opt_state=temperature_opt_state,
            step=state.step + 1,
        )
        metrics = {
            **critic_metrics,
            "actor_loss": actor_loss,
            "entropy": entropy,
            "temperature": jnp.exp(log_temperature),
        }
        return new_state, metrics

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: DACERState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        """A sample of the acting policy; ``deterministic=True`` drops the added noise (the
        code's evaluation), leaving the chain's own action."""
        alpha = jnp.zeros(()) if deterministic else jnp.exp(state.log_temperature)
        return policy.sample(state.actor_params, obs, key, alpha)

    @jax.jit
    def update(state: DACERState, batch: Batch, key: jax.Array) -> tuple[DACERState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: DACERState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def actor_step(state: DACERState, batch: Batch, key: jax.Array):
        return jax.grad(actor_loss_fn)(
            state.actor_params, state.critic_params, state.log_temperature, batch.obs, key
        )

    phases = {
        "critic step": jax.jit(critic_step),
        "actor step (through the chain)": jax.jit(actor_step),
        "entropy estimate (GMM)": jax.jit(
            lambda state, batch, key: estimate_entropy(state, batch.obs, key)
        ),
    }
    return Agent(init=init, act=act, update=update, phases=phases)


PRESETS = {
    "paper": Preset(
        {"learning_starts": 30_000, "batch_size": 256, "eval_every": 10_000},
        "The official code's settings (20 diffusion steps, 3x256 mish networks, lr 1e-4, alpha "
        "from 3 with lr 0.03 every 10k updates, GMM of 3 components on 200 actions per state, "
        "reward scale 0.2, 30k random steps; Humanoid: noise scale 0.15, 200k random steps). Its "
        "published Humanoid numbers use 20 vector envs (one update per 20 env steps) and 30M env "
        "samples; the replay loop here steps one env per update.",
        suite="gym",
        per_task={"Humanoid": {"noise_scale": 0.15, "learning_starts": 200_000}},
    ),
    "cpu": Preset(
        {
            "actor_hidden_dims": (256, 256),
            "critic_hidden_dims": (256, 256),
            "num_diffusion_steps": 10,
            "batch_size": 128,
            "actor_lr": 3e-4,
            "critic_lr": 3e-4,
            "alpha_update_every": 50,
            "entropy_states": 16,
            "entropy_samples": 64,
            "gmm_iterations": 20,
            "entropy_before_clip": True,
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "Two layers of 256, 10 diffusion steps, batch 128, lr 3e-4, and the entropy estimated "
        "every 50 updates from 64 unclipped actions of 16 states: short CPU runs on Pendulum-v1.",
    ),
}
