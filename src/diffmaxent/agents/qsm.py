"""QSM: Q-score matching (Psenka, Escontrela, Abbeel and Ma, "Learning a Diffusion Model Policy
from Rewards via Q-Score Matching", ICML 2024, arXiv:2312.11752; Algorithm 1).

The policy is a DDPM over actions whose noise predictor ``eps_theta(s, a_t, t)`` is its score
model: the score of the noised policy is ``Psi = -eps / sigma_t``. The paper's theory (Theorems 4.1
and 4.3, pictured in its Fig. 1) says that a policy whose score is not aligned with the critic's
action gradient ``grad_a Q(s, a)`` improves by aligning it, so Algorithm 1 alternates

* policy evaluation: a TD step of twin critics towards
  ``r + gamma (1 - terminated) min_j Q'_j(s', a')`` with ``a' ~ pi(.|s')`` drawn by the DDPM
  sampler and target critics updated by Polyak averaging. There is no entropy term;
* Q-score matching: noise a replay action to a uniformly drawn level ``t`` of the sampling grid,
  ``a_t = sqrt(abar_t) a + sqrt(1 - abar_t) z``, and regress the score model onto the scaled action
  gradient there, ``min_theta || eps_theta(s, a_t, t) - (-alpha grad_a Q(s, a_t)) ||^2``
  (:func:`qsm_noise_target`). ``alpha`` is the code's ``M_q`` (``score_scale``); the gradient is
  held fixed, so nothing is differentiated through the sampling chain.

The policy acts by the DDPM ancestral sampler on ``T`` discrete levels of a beta schedule
(``diffusion.discrete_log_snr_grid``); the behaviour action adds ``N(0, 0.1^2)`` and is clipped.

Paper vs official code (Alescontrela/score_matching_rl @ 2e77893, jaxrl5). Its README restates
Algorithm 1 as ``min ||eps_theta(a, s, t) - M_q grad_a Q(s, a)||^2`` (the code's target carries the
minus sign DDPM's noise convention needs), with ``M_q`` the paper's ``alpha``, and the code
follows it: the target is ``-M_q grad_a Q`` at every noise level. Defaults follow the paper and the
code where they agree; the code's own additions are options:

* target scaling: ``score_scaling=constant`` is Algorithm 1 and the code (no ``sigma_t`` factor);
  ``noise_std`` matches the noised policy's score ``Psi = -eps / sigma_t`` itself to
  ``alpha grad_a Q``, i.e. ``eps -> -alpha sigma_t grad_a Q``, which with ``critic_reduce=min`` is
  MaxEntDP's ``score_target=qsm`` (``diffusion.noise_target``) at ``beta = 1 / alpha``;
* critics: the gradient is the mean of both online critics' gradients (the code,
  ``critic_reduce=mean``), taken after this step's critic update; the TD target uses the min of
  the target critics;
* schedule: T = 5 levels of the ``vp`` beta schedule (``b_min`` 0.1, ``b_max`` 10), training
  levels uniform on the grid, the network conditioned on the level (the code feeds the integer
  ``t`` to its Fourier features; here, as for every diffusion policy of the library, the level's
  log-SNR);
* sampler clipping: the code clips the sample ``a_t`` to ``[-1, 1]`` after every DDPM step
  (jaxrl5's ``clip_sampler``, ``sampler_clip=sample``, the default); ``x0`` clips the clean
  prediction instead (MaxEntDP's and Diffusion-QL's code), ``none`` neither;
* noise on actions: the code adds ``N(0, 0.1^2)`` to the behaviour action (``exploration_noise``)
  and also to ``a'`` in the critic target (``target_noise``), both clipped to the box; evaluation
  takes one DDPM sample without it (``deterministic=True``);
* the code decays the actor learning rate with a cosine over 2M updates (jaxrl5's
  ``decay_steps`` default, not in the paper or its config): ``actor_lr_decay_steps=2000000``; the
  default keeps it constant;
* the code initialises every Dense kernel xavier-uniform (``weight_init=xavier_uniform``); the
  default is flax's lecun-normal. Actor (mish) and critics (relu) are 512 x 512 in its config.

The ``official`` preset is the code's behaviour on every point above; ``paper`` the algorithm with
the code's configuration (T = 5, M_q = 50, 512 x 512, 10k random steps); ``maxentdp-b2`` the
settings MaxEntDP (Dong et al. 2025, Table B2) ran QSM with: 3 x 256 mish networks, 20 steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent import diffusion
from diffmaxent.agents.common import Agent, apply_gradients, polyak_update, scan_updates
from diffmaxent.agents.groups import DiffusionChain, Discount, Optimisers, TargetCritics
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.diffusion import NoiseNet
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.nn import EnsembleCritic
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class QSMConfig(
    with_defaults(DiffusionChain, num_diffusion_steps=5, actor_hidden_dims=(512, 512)),
    with_defaults(TargetCritics, critic_hidden_dims=(512, 512)),
    Optimisers,
    Discount,
):
    """QSM hyperparameters; defaults are Algorithm 1 with the official config's values."""

    score_scale: float = hp(
        50.0, "alpha (code: M_q): the score model regresses onto alpha grad_a Q", low=0.0
    )
    score_scaling: Literal["constant", "noise_std"] = hp(
        "constant", "eps target -alpha grad Q (paper, code) or -alpha sigma_t grad Q (the score)"
    )
    critic_reduce: Literal["mean", "min"] = hp(
        "mean", "combine the online critics' action gradients: mean (code) or min"
    )
    beta_schedule: Literal["vp", "linear"] = hp(
        "vp", "discrete DDPM beta schedule of the T levels (code: vp)"
    )
    sampler_clip: Literal["sample", "x0", "none"] = hp(
        "sample", "DDPM clipping per step: the sample a_t (code), the clean prediction, or none"
    )
    exploration_noise: float = hp(
        0.1, "std of the Gaussian added to behaviour actions (code: 0.1)", low=0.0
    )
    target_noise: float = hp(0.1, "std of the Gaussian added to a' in the TD target", low=0.0)
    critic_activation: Literal["relu", "mish"] = hp("relu", "critic hidden activation (code)")
    layer_norm: bool = hp(False, "LayerNorm in the noise network (official: none)")
    actor_lr_decay_steps: int = hp(
        0, "cosine-decay the actor lr over this many updates (0 = off)", low=0
    )
    weight_init: Literal["lecun_normal", "xavier_uniform"] = hp(
        "lecun_normal", "Dense kernel init of noise net and critics (official: xavier_uniform)"
    )


class QSMState(struct.PyTreeNode):
    """Score model, twin critics with target copies, their optimiser states, and the step."""

    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    step: jax.Array


def qsm_noise_target(
    obs: jax.Array,
    noisy_action: jax.Array,
    log_snr: jax.Array,
    q_fn,
    *,
    score_scale: float,
    score_scaling: str = "constant",
) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1's regression target for ``eps_theta(s, a_t, t)``: ``-alpha grad_a Q(s, a_t)``
    (``score_scaling="constant"``) or ``-alpha sigma_t grad_a Q(s, a_t)`` (``"noise_std"``).

    ``obs [B, obs_dim]``, ``noisy_action [B, A]``, ``log_snr [B]``, ``q_fn(obs, actions) -> [B]``
    (each output depending on its own action only). Returns ``(target [B, A], grad [B, A])``, both
    with their gradients stopped."""
    grad = jax.grad(lambda a: jnp.sum(q_fn(obs, a)))(noisy_action)
    target = -score_scale * grad
    if score_scaling == "noise_std":
        target = target * diffusion.sigma_from_log_snr(log_snr)[..., None]
    return jax.lax.stop_gradient(target), jax.lax.stop_gradient(grad)


def make(config: QSMConfig, spec: EnvSpec) -> Agent:
    """Build QSM's pure ``init`` / ``act`` / ``update`` for one env."""
    action_dim = spec.action_dim
    noise_net = NoiseNet(
        action_dim,
        config.actor_hidden_dims,
        layer_norm=config.layer_norm,
        kernel_init=config.weight_init,
    )
    critic = EnsembleCritic(
        config.critic_hidden_dims,
        config.num_critics,
        activation=config.critic_activation,
        kernel_init=config.weight_init,
    )
    actor_optimizer = (
        optax.adam(optax.cosine_decay_schedule(config.actor_lr, config.actor_lr_decay_steps))
        if config.actor_lr_decay_steps
        else config.actor_optimizer()
    )
    critic_optimizer = config.critic_optimizer()
    reduce_critics = jnp.mean if config.critic_reduce == "mean" else jnp.min

    def init(key: jax.Array) -> QSMState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params = noise_net.init(actor_key, obs, action, jnp.zeros((1,)))
        critic_params = critic.init(critic_key, obs, action)
        return QSMState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=critic_params,
            actor_opt_state=actor_optimizer.init(actor_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            step=jnp.zeros((), jnp.int32),
        )

    def sample_actions(actor_params, obs: jax.Array, key: jax.Array) -> jax.Array:
        """``a ~ pi(.|s)`` by DDPM ancestral sampling on the T-level schedule, clipped to the
        action box: obs ``[B, obs_dim]`` -> ``[B, A]``."""
        action = diffusion.ddpm_sample(
            lambda noisy_action, log_snr: noise_net.apply(actor_params, obs, noisy_action, log_snr),
            key,
            (*obs.shape[:-1], action_dim),
            num_steps=config.num_diffusion_steps,
            spacing=config.beta_schedule,
            clip_x0=config.sampler_clip == "x0",
            clip_sample=config.sampler_clip == "sample",
        )
        return jnp.clip(action, -1.0, 1.0)

    def with_noise(action: jax.Array, std: float, key: jax.Array) -> jax.Array:
        """``clip(a + N(0, std^2), -1, 1)``."""
        if std == 0.0:
            return action
        return jnp.clip(action + std * jax.random.normal(key, action.shape), -1.0, 1.0)

    def critic_target(state: QSMState, batch: Batch, key: jax.Array) -> jax.Array:
        """The TD target ``r + gamma (1 - terminated) min_j Q'_j(s', a')`` (no entropy term)."""
        sample_key, noise_key = jax.random.split(key)
        next_action = sample_actions(state.actor_params, batch.next_obs, sample_key)
        next_action = with_noise(next_action, config.target_noise, noise_key)
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(0)
        target = td_target(batch.reward, batch.terminated, next_q, config.gamma)
        return jax.lax.stop_gradient(target)

    def critic_loss_fn(critic_params, batch: Batch, target: jax.Array):
        """Mean squared TD error of each critic, summed over the critics."""
        q = critic.apply(critic_params, batch.obs, batch.action)
        return jnp.sum(jnp.mean((q - target) ** 2, axis=-1)), q

    def score_matching_target(critic_params, batch: Batch, key: jax.Array):
        """Noise the replay action to a uniform level of the grid; the QSM target there."""
        level_key, noise_key = jax.random.split(key)
        log_snr = diffusion.sample_grid_log_snr(
            level_key, batch.action.shape[:-1], config.num_diffusion_steps, config.beta_schedule
        )
        alpha = diffusion.alpha_from_log_snr(log_snr)[..., None]
        sigma = diffusion.sigma_from_log_snr(log_snr)[..., None]
        noisy_action = alpha * batch.action + sigma * jax.random.normal(
            noise_key, batch.action.shape
        )

        def q_fn(obs, actions):
            return reduce_critics(critic.apply(critic_params, obs, actions), axis=0)

        target, grad = qsm_noise_target(
            batch.obs,
            noisy_action,
            log_snr,
            q_fn,
            score_scale=config.score_scale,
            score_scaling=config.score_scaling,
        )
        return noisy_action, log_snr, target, grad

    def actor_loss_fn(actor_params, obs, noisy_action, log_snr, target):
        """``mean || eps_theta(s, a_t, t) - target ||^2`` over the batch and action dims."""
        prediction = noise_net.apply(actor_params, obs, noisy_action, log_snr)
        return jnp.mean((prediction - target) ** 2)

    def gradient_step(state: QSMState, batch: Batch, key: jax.Array) -> tuple[QSMState, Metrics]:
        target_key, actor_key = jax.random.split(key)
        target = critic_target(state, batch, target_key)
        (critic_loss, q), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic_params, batch, target
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )
        target_critic_params = polyak_update(state.target_critic_params, critic_params, config.tau)

        noisy_action, log_snr, noise_target, q_grad = score_matching_target(
            critic_params, batch, actor_key
        )
        actor_loss, actor_grads = jax.value_and_grad(actor_loss_fn)(
            state.actor_params, batch.obs, noisy_action, log_snr, noise_target
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )
        new_state = state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=state.step + 1,
        )
        metrics = {
            "critic_loss": critic_loss,
            "q_mean": q.mean(),
            "actor_loss": actor_loss,
            "q_grad_norm": jnp.mean(jnp.linalg.norm(q_grad, axis=-1)),
        }
        return new_state, metrics

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: QSMState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        """``deterministic=True`` is the code's evaluation: one DDPM sample; otherwise the
        behaviour action, that sample plus ``N(0, exploration_noise^2)``, clipped."""
        sample_key, noise_key = jax.random.split(key)
        action = sample_actions(state.actor_params, obs, sample_key)
        if deterministic:
            return action
        return with_noise(action, config.exploration_noise, noise_key)

    @jax.jit
    def update(state: QSMState, batch: Batch, key: jax.Array) -> tuple[QSMState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_gradient(state, batch, key):
        # The target's cost is its own phase; a stand-in target isolates the gradient step.
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, batch, batch.reward)

    def actor_step(state, batch, key):
        noisy_action, log_snr, target, _ = score_matching_target(state.critic_params, batch, key)
        return jax.grad(actor_loss_fn)(state.actor_params, batch.obs, noisy_action, log_snr, target)

    phases = {
        "critic target (DDPM sample)": jax.jit(critic_target),
        "critic gradient step": jax.jit(critic_gradient),
        "Q-score matching actor step": jax.jit(actor_step),
    }
    return Agent(init=init, act=act, update=update, phases=phases)


# The official config (examples/states/configs/score_matching_config.py) and run script:
# batch 256, 10k random steps, evaluation every 10k steps.
PAPER_VALUES = {"learning_starts": 10_000, "batch_size": 256, "eval_every": 10_000}

# What the official code does beyond the algorithm (module docstring).
OFFICIAL_DIFFERENCES = {
    "actor_lr_decay_steps": 2_000_000,  # jaxrl5 ScoreMatchingLearner.create's decay_steps default
    "weight_init": "xavier_uniform",  # jaxrl5's default kernel init, critics and noise net
    "eval_episodes": 1,  # the run script's eval_episodes flag
}

# MaxEntDP's Table B2 (Dong et al. 2025), its re-run of QSM: 3 x 256 mish networks, 20 steps.
MAXENTDP_B2 = {
    "actor_hidden_dims": (256, 256, 256),
    "critic_hidden_dims": (256, 256, 256),
    "critic_activation": "mish",
    "num_diffusion_steps": 20,
}

PRESETS = {
    "paper": Preset(
        PAPER_VALUES,
        "Algorithm 1 with the official config's values (T=5 vp levels, M_q=50, 512x512 actor "
        "and critics, lr 3e-4, tau 0.005, batch 256, 10k random steps); the code ran DMC.",
        suite="dmc",
    ),
    "official": Preset(
        {**PAPER_VALUES, **OFFICIAL_DIFFERENCES},
        "The official code's behaviour: `paper` plus a cosine decay of the actor lr over 2M "
        "updates (actor_lr_decay_steps), xavier-uniform weights (weight_init) and one "
        "evaluation episode every 10k steps.",
        suite="dmc",
    ),
    "maxentdp-b2": Preset(
        {**PAPER_VALUES, **MAXENTDP_B2},
        "QSM as MaxEntDP's comparison ran it (Dong et al. 2025, Table B2, Gym MuJoCo): `paper` "
        "with 3 hidden layers of 256 mish units in actor and critics and 20 diffusion steps.",
        suite="gym",
    ),
    "cpu": Preset(
        {
            "actor_hidden_dims": (128, 128),
            "critic_hidden_dims": (128, 128),
            "actor_lr": 1e-3,
            "critic_lr": 1e-3,
            "batch_size": 128,
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "The algorithm's T=5 and M_q=50 with 128x128 networks, batch 128 and learning rates "
        "1e-3: learns Pendulum-v1 in 5-10k steps on 2 CPU cores (lr 3e-4 took 6-10k).",
    ),
}
