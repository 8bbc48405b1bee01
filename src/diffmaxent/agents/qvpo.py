"""QVPO: Q-weighted Variational Policy Optimization (Ding et al., NeurIPS 2024, arXiv:2405.16173).

An off-policy actor-critic whose actor is a diffusion policy trained only with its own denoising
(variational lower bound, VLO) loss, no gradient through the sampler:

* policy evaluation: twin critics regressed onto ``r + gamma min_j Q'_j(s', a')`` with target
  critics; ``a'`` is the best (by the target critics) of ``target_candidates`` samples of a
  Polyak-averaged target copy of the policy. The target has no entropy term;
* the Q-weighted VLO loss: draw ``num_train_samples`` actions per state from the current policy,
  keep the ``num_chosen`` best by Q, and regress the noise network onto the noise of those actions
  weighted by a non-negative transformation of Q (the ``qadv`` weight
  ``w(s, a) = max(Q(s, a) - V(s), 0)`` with ``V(s)`` the mean Q of the drawn samples, or ``qcut``).
  The paper shows that this weighted denoising loss is a lower bound of the policy objective when
  the weights are non-negative, which is why Q must be transformed;
* the diffusion entropy regulariser: the same denoising loss on actions drawn uniformly from the
  action box, each with the weight ``omega * w(s, a_chosen)`` of its state, which pulls the policy
  towards the uniform (maximum-entropy) distribution in proportion to how much the state's
  policy update weighs;
* the efficient behaviour policy: act with the best (by the online critics) of
  ``behaviour_candidates`` samples, and evaluate with the best of ``eval_candidates``.

The paper's text is not in this library's reference store, so the losses are named by what they
are rather than by equation number; every default below is the official code's
(``wadx2019/qvpo``, run as its README says: ``--weighted --aug``) and MaxEntDP's Table B2
(3 hidden layers of 256 with mish, 20 diffusion steps, batch 256, tau 0.005, 32 candidates).

Official code's hidden settings (all defaults here unless said):

* 64 samples per state for the weighted loss (``num_train_samples``), of which only the best one
  is kept (``num_chosen=1``); with one kept action per state the ``qadv`` weight is zero only where
  every sample has the same Q (``num_chosen > 1`` keeps actions below the mean, at weight 0);
* the weights come from the online critics (after this step's critic update), min over the twin;
* ``q_transform=qadv`` (code default); ``qcut`` is the code's ``max(Q, cut)`` with ``cut=1``;
* the entropy term: 10 uniform actions per kept action (``num_entropy_samples``), weight
  ``omega = 0.02`` decayed linearly to ``0.002`` over the run (the code decays it by env step over
  its 1M-step budget; here ``entropy_weight_decay_steps`` counts gradient steps, so the 10k-step
  warm-up is not counted; ``0`` keeps omega constant);
* the losses are a mean over all rows and action dimensions: the kept actions and the uniform
  actions share one mean (so the entropy rows carry ``num_entropy_samples`` times the count);
* behaviour: best of 4 by the online critics; critic target: best of 4 samples of the target
  policy by the target critics; evaluation: best of 32 by the online critics;
* a target copy of the policy, Polyak-averaged with tau every step (only the critic target uses it);
* Adam with ``eps=1e-5`` for policy and critics, gradients clipped to global norm 2 for both;
  policy learning rate 1e-4 (``diffusion_lr``; Table B2 lists 3e-4), critics 3e-4; no lr decay
  (the code imports a cosine scheduler but never uses it); one policy step per critic step;
* critics and noise network of 3 hidden layers of 256 with mish.

Where this library's shared diffusion core differs from the code (the core is the default):

* the code's discrete DDPM cosine schedule with T = 20 and training levels drawn from
  ``t in {0, .., 19}``; here the continuous VP cosine schedule of :mod:`diffmaxent.diffusion`, with
  sampling on its 20-step time grid and training levels ``t ~ U[T_MIN, T_MAX]`` (the same cosine
  read at 20 points rather than 20 discrete betas; the core's discrete grids are ``vp`` and
  ``linear``, not the code's ``cosine``);
* the code's sampler is DDPM ancestral sampling with the clean action clipped to [-1, 1] at every
  step (``sampler=ddpm``, the default, uses the core's equivalent); ``ddim`` and
  ``dpm_solver_2m`` are options;
* the noise network is the core's :class:`~diffmaxent.diffusion.NoiseNet` (Fourier features of the
  log-SNR) rather than the code's sinusoidal embedding of the step index; the code's truncated
  normal initialisation is not reproduced (flax's lecun-normal).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp

from diffmaxent import diffusion
from diffmaxent.agents.common import (
    Agent,
    TargetPolicyState,
    apply_gradients,
    init_target_policy_state,
    polyak_update,
    scan_updates,
)
from diffmaxent.agents.groups import (
    ClippedOptimisers,
    DiffusionChain,
    Discount,
    TargetCritics,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.diffusion import NoiseNet
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.types import Batch, Metrics

THREE_LAYERS = (256, 256, 256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QVPOConfig(
    with_defaults(DiffusionChain, num_diffusion_steps=20, actor_hidden_dims=THREE_LAYERS),
    with_defaults(TargetCritics, critic_hidden_dims=THREE_LAYERS),
    with_defaults(ClippedOptimisers, actor_lr=1e-4, adam_eps=1e-5),
    Discount,
):
    """QVPO hyperparameters; defaults are the official code's (``main.py``) and Table B2's."""

    num_train_samples: int = hp(64, "actions drawn per state for the Q-weighted loss", low=1)
    num_chosen: int = hp(1, "best of the drawn actions kept per state for the loss", low=1)
    q_transform: Literal["qadv", "qcut"] = hp(
        "qadv", "non-negative weight: qadv = max(Q - mean Q, 0), qcut = max(Q, cut)"
    )
    q_cut: float = hp(1.0, "floor of the qcut weight", low=0.0)
    entropy_weight: float = hp(0.02, "omega: weight of the uniform-action entropy term", low=0.0)
    entropy_weight_min: float = hp(0.002, "omega at the end of its linear decay", low=0.0)
    entropy_weight_decay_steps: int = hp(
        1_000_000, "gradient steps of omega's linear decay (0 = constant)", low=0
    )
    num_entropy_samples: int = hp(10, "uniform actions per kept action (entropy term)", low=0)
    behaviour_candidates: int = hp(4, "best-of-N by Q when acting in training", low=1)
    target_candidates: int = hp(4, "best-of-N by target Q for the critic's next action", low=1)
    eval_candidates: int = hp(32, "M: best-of-M by Q for deterministic actions (1 = sample)", low=1)
    sampler: Literal["ddpm", "ddim", "dpm_solver_2m"] = hp(
        "ddpm", "sampler: ddim (probability-flow ODE), ddpm (stochastic, x0 clipped), dpm_solver_2m"
    )
    layer_norm: bool = hp(False, "LayerNorm in the noise network (official: none)")


QVPOState = TargetPolicyState


# --- the pieces the paper names, as pure functions of arrays ------------------------------------


def best_of(candidates: jax.Array, q: jax.Array) -> jax.Array:
    """Best-of-N selection: ``candidates [B, N, A]`` scored by ``q [B, N]`` -> ``[B, A]``."""
    best = jnp.argmax(q, axis=-1)
    return jnp.take_along_axis(candidates, best[:, None, None], axis=1)[:, 0]


def q_weights(
    q: jax.Array, num_chosen: int, transform: str, cut: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """The Q-weight transformation: ``q [B, N]`` of the drawn actions -> ``(indices [B, k],
    weights [B, k])`` of the ``k = num_chosen`` best, with non-negative weights.

    ``qadv``: ``max(Q - V(s), 0)`` with the baseline ``V(s)`` the mean of the state's ``N`` values;
    ``qcut``: ``max(Q, cut)``."""
    top_q, indices = jax.lax.top_k(q, num_chosen)
    if transform == "qadv":
        weights = jnp.maximum(top_q - q.mean(axis=-1, keepdims=True), 0.0)
    elif transform == "qcut":
        weights = jnp.maximum(top_q, cut)
    else:
        raise ValueError(f"unknown q_transform {transform!r}; expected qadv or qcut")
    return indices, jax.lax.stop_gradient(weights)


def entropy_weight_at(config: QVPOConfig, step: jax.Array) -> jax.Array:
    """omega after ``step`` gradient steps: linear from ``entropy_weight`` down to
    ``entropy_weight_min`` over ``entropy_weight_decay_steps``, then constant."""
    if config.entropy_weight_decay_steps == 0:
        return jnp.asarray(config.entropy_weight, jnp.float32)
    decayed = config.entropy_weight * (1.0 - step / config.entropy_weight_decay_steps)
    return jnp.clip(decayed, config.entropy_weight_min, config.entropy_weight)


def with_entropy_rows(
    chosen: jax.Array, weights: jax.Array, omega: jax.Array, num_samples: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Append the entropy regulariser's rows to the Q-weighted loss's: ``chosen [B, k, A]`` with
    ``weights [B, k]`` -> ``[B, k (1 + m), A]`` and ``[B, k (1 + m)]``, where the ``m =
    num_samples`` uniform actions in [-1, 1]^A per kept action carry ``omega`` times its weight."""
    batch, num_chosen, action_dim = chosen.shape
    uniform = jax.random.uniform(
        key, (batch, num_chosen * num_samples, action_dim), minval=-1.0, maxval=1.0
    )
    uniform_weights = omega * jnp.repeat(weights, num_samples, axis=1)
    return (
        jnp.concatenate([chosen, uniform], axis=1),
        jnp.concatenate([weights, uniform_weights], axis=1),
    )


def weighted_denoising_loss(
    noise_net: NoiseNet,
    actor_params,
    obs: jax.Array,
    actions: jax.Array,
    weights: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """The weighted VLO loss ``mean w ||eps - eps_theta(alpha a + sigma eps, lambda, s)||^2 / |A|``
    over the rows: ``obs [B, obs_dim]``, ``actions [B, K, A]``, ``weights [B, K]``; one noise
    level ``lambda`` (``t ~ U``) and one noise draw per row."""
    level_key, noise_key = jax.random.split(key)
    log_snr = diffusion.sample_log_snr(level_key, actions.shape[:-1])
    alpha = diffusion.alpha_from_log_snr(log_snr)[..., None]
    sigma = diffusion.sigma_from_log_snr(log_snr)[..., None]
    noise = jax.random.normal(noise_key, actions.shape)
    prediction = noise_net.apply(actor_params, obs, alpha * actions + sigma * noise, log_snr)
    return jnp.mean(weights[..., None] * (prediction - noise) ** 2)


def make(config: QVPOConfig, spec: EnvSpec) -> Agent:
    """Build QVPO's pure ``init`` / ``act`` / ``update`` for one env."""
    action_dim = spec.action_dim
    noise_net = NoiseNet(action_dim, config.actor_hidden_dims, layer_norm=config.layer_norm)
    critic = config.critic().clone(activation="mish")

    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()

    def init(key: jax.Array) -> QVPOState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params = noise_net.init(actor_key, obs, action, jnp.zeros((1,)))
        critic_params = critic.init(critic_key, obs, action)
        return init_target_policy_state(
            actor_params, critic_params, actor_optimizer, critic_optimizer
        )

    def sample_candidates(actor_params, obs: jax.Array, key: jax.Array, num: int) -> jax.Array:
        """``num`` policy samples per state, clipped to the box: ``[B, obs_dim] -> [B, num, A]``."""
        action = diffusion.sample(
            lambda noisy, log_snr: noise_net.apply(actor_params, obs, noisy, log_snr),
            key,
            (obs.shape[0], num, action_dim),
            sampler=config.sampler,
            num_steps=config.num_diffusion_steps,
        )
        return jnp.clip(action, -1.0, 1.0)

    def min_q(critic_params, obs: jax.Array, actions: jax.Array) -> jax.Array:
        """``min_j Q_j(s, a)``: obs ``[B, obs_dim]``, actions ``[B, N, A]`` -> ``[B, N]``."""
        return critic.apply(critic_params, obs, actions).min(axis=0)

    def best_action(actor_params, critic_params, obs, key, num: int) -> jax.Array:
        candidates = sample_candidates(actor_params, obs, key, num)
        return best_of(candidates, min_q(critic_params, obs, candidates))

    def critic_loss_fn(critic_params, state: QVPOState, batch: Batch, key: jax.Array):
        """Clipped double-Q regression onto the target critics at the target policy's best-of-N
        next action; no entropy term."""
        next_action = best_action(
            state.target_actor_params,
            state.target_critic_params,
            batch.next_obs,
            key,
            config.target_candidates,
        )
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(0)
        target = jax.lax.stop_gradient(
            td_target(batch.reward, batch.terminated, next_q, config.gamma)
        )
        q = critic.apply(critic_params, batch.obs, batch.action)
        loss = jnp.sum(jnp.mean((q - target) ** 2, axis=-1))
        return loss, {"critic_loss": loss, "q_mean": q.mean()}

    def weighted_rows(state: QVPOState, critic_params, obs: jax.Array, key: jax.Array):
        """The Q-weighted VLO loss's rows and the entropy term's: ``(actions [B, K, A],
        weights [B, K], metrics)`` with ``K = num_chosen (1 + num_entropy_samples)``."""
        sample_key, uniform_key = jax.random.split(key)
        candidates = sample_candidates(
            state.actor_params, obs, sample_key, config.num_train_samples
        )
        q = jax.lax.stop_gradient(min_q(critic_params, obs, candidates))
        indices, weights = q_weights(q, config.num_chosen, config.q_transform, config.q_cut)
        chosen = jax.lax.stop_gradient(jnp.take_along_axis(candidates, indices[..., None], axis=1))
        omega = entropy_weight_at(config, state.step)
        actions, all_weights = with_entropy_rows(
            chosen, weights, omega, config.num_entropy_samples, uniform_key
        )
        return actions, all_weights, {"q_weight_mean": weights.mean(), "entropy_weight": omega}

    def actor_loss_fn(actor_params, obs, actions, weights, key):
        return weighted_denoising_loss(noise_net, actor_params, obs, actions, weights, key)

    def gradient_step(state: QVPOState, batch: Batch, key: jax.Array) -> tuple[QVPOState, Metrics]:
        critic_key, rows_key, loss_key = jax.random.split(key, 3)
        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, critic_key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )

        actions, weights, weight_metrics = weighted_rows(state, critic_params, batch.obs, rows_key)
        actor_loss, actor_grads = jax.value_and_grad(actor_loss_fn)(
            state.actor_params, batch.obs, actions, weights, loss_key
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )
        new_state = state.replace(
            actor_params=actor_params,
            target_actor_params=polyak_update(state.target_actor_params, actor_params, config.tau),
            critic_params=critic_params,
            target_critic_params=polyak_update(
                state.target_critic_params, critic_params, config.tau
            ),
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=state.step + 1,
        )
        return new_state, {**critic_metrics, "actor_loss": actor_loss, **weight_metrics}

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: QVPOState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        """Best of ``eval_candidates`` (deterministic, evaluation) or ``behaviour_candidates``
        (training) policy samples by the online critics' min-Q."""
        num = config.eval_candidates if deterministic else config.behaviour_candidates
        return best_action(state.actor_params, state.critic_params, obs, key, num)

    @jax.jit
    def update(state: QVPOState, batch: Batch, key: jax.Array) -> tuple[QVPOState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: QVPOState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def actor_step(state: QVPOState, batch: Batch, key: jax.Array):
        rows_key, loss_key = jax.random.split(key)
        actions, weights, _ = weighted_rows(state, state.critic_params, batch.obs, rows_key)
        return jax.grad(actor_loss_fn)(state.actor_params, batch.obs, actions, weights, loss_key)

    phases = {
        "critic step incl. target sampling": jax.jit(critic_step),
        "Q-weighted actor step incl. sampling": jax.jit(actor_step),
    }
    return Agent(init=init, act=act, update=update, phases=phases)


PRESETS = {
    "paper": Preset(
        {"learning_starts": 10_000, "batch_size": 256, "eval_every": 10_000},
        "The official code's main.py (64 samples per state, best kept, qadv weights, omega 0.02 "
        "decayed to 0.002, best of 4 / 32 for behaviour / evaluation, 20 DDPM steps, policy lr "
        "1e-4, grad clip 2) and MaxEntDP's Table B2 (3 x 256 mish, batch 256).",
        suite="gym",
    ),
    "cpu": Preset(
        {
            "batch_size": 64,
            "num_train_samples": 8,
            "num_diffusion_steps": 5,
            "actor_hidden_dims": (256, 256),
            "critic_hidden_dims": (256, 256),
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "Batch 64, 8 samples per state, 5 DDPM steps and two hidden layers, the rest the "
        "code's: about 30 ms per update on one idle CPU core; learns Pendulum-v1 in 4-6k steps.",
    ),
}
