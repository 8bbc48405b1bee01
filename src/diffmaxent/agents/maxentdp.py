"""MaxEntDP: maximum-entropy RL with a diffusion policy (Dong et al., 2025; Algorithm 1).

Soft actor-critic with a diffusion policy, represented by its noise predictor eps_phi(a_t, lam, s):

* policy evaluation (Alg. 1 lines 11-15): ``a' ~ pi(.|s')`` by solving the reverse diffusion
  (eq. 5), ``log pi(a'|s')`` by numerical integration over noise levels (Theorem 6, eq. 21), and a
  soft target ``r + gamma (min_i Q'_i(s', a') - beta log pi(a'|s'))`` (eq. 2);
* policy improvement (lines 16-18): noise a replay action, ``a_t ~ N(alpha a, sigma^2 I)``, and
  regress ``eps_phi`` onto the Q-weighted noise estimate (eqs. 14-18) with truncated Gaussian
  candidates so every candidate stays in the action box;
* target critics by Polyak averaging (line 19);
* evaluation with best-of-M action selection by Q (Sec. 3.3, "Action Selection for inference").

Paper vs official code (the default is the paper's; the code's behaviour is an option):

* sampler: the paper's probability-flow ODE (``sampler=ddim``); the code's stochastic DDPM
  ancestral sampler with x0 clipping is ``sampler=ddpm``;
* log-probability: the paper's rectangle rule (eq. 21, ``logprob_rule=rectangle``, T=20, N=50);
  the ``cpu`` preset uses Gauss-Legendre nodes in log-SNR (``gauss_legendre``), which is far less
  biased for narrow policies at a fraction of the cost (docs/benchmarks.md); the code's x0
  clipping inside the estimator is ``logprob_clip_x0=true``;
* QNE weights and best-of-M selection use the target critics, as the code does (the paper does not
  say); ``qne_target_critic=false`` uses the online critics;
* the code decays the actor learning rate with a cosine over 2M updates (not in the paper):
  ``actor_lr_decay_steps=2000000``; the default keeps it constant;
* the noise network has no normalisation in the code (``layer_norm=false``); the ``cpu`` preset
  turns LayerNorm on, without which a small network barely learns;
* the code initialises every Dense kernel xavier-uniform (``weight_init=xavier_uniform``); the
  default is flax's lecun-normal.

The ``official`` preset is the code's behaviour on every point above (its run script's per-task
temperatures are Table B1's), ``paper`` the text's.

``temperature=auto`` is the paper's stated future work: beta is tuned towards ``target_entropy``
using the same log-probability estimate the critic target already computes (no extra cost).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from diffmaxent import diffusion
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
from diffmaxent.types import Batch


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaxEntDPConfig(
    with_defaults(DiffusionChain, num_diffusion_steps=20),
    TargetCritics,
    TargetEntropy,
    with_defaults(Temperature, temperature=0.1, init_temperature=0.1),
    Optimisers,
    Discount,
):
    """MaxEntDP hyperparameters; defaults are the paper's (Tables B2-B3)."""

    num_qne_samples: int = hp(500, "K: candidates per state in Q-weighted noise estimation", low=1)
    score_target: Literal["qne", "idem", "qsm"] = hp(
        "qne", "policy target: qne (paper), idem or qsm (the paper's ablation, Fig. 3)"
    )
    qne_target_critic: bool = hp(True, "weight QNE candidates (and eval choices) by target critics")
    sampler: Literal["ddim", "ddpm", "dpm_solver_2m"] = hp(
        "ddim", "sampler: ddim (probability-flow ODE), ddpm (stochastic, x0 clipped), dpm_solver_2m"
    )
    logprob_rule: Literal["rectangle", "gauss_legendre"] = hp(
        "rectangle", "log-prob quadrature: rectangle (paper eq. 21) or gauss_legendre (log-SNR)"
    )
    num_logprob_levels: int = hp(20, "T: noise levels of the log-prob integral", low=1)
    num_logprob_samples: int = hp(50, "N: noise samples per level in the log-prob", low=1)
    logprob_antithetic: bool = hp(False, "pair each log-prob noise sample with its negation")
    logprob_clip_x0: bool = hp(False, "clip the implied clean action in the log-prob (code)")
    logprob_control_variate: bool = hp(
        False, "subtract c (|eps|^2 - d) per level in the log-prob: unbiased, 3x less noise"
    )
    entropy_backup: bool = hp(True, "include -beta log pi(a'|s') in the critic target")
    eval_candidates: int = hp(10, "M: best-of-M by Q for deterministic actions (1 = sample)", low=1)
    layer_norm: bool = hp(False, "LayerNorm in the noise network (official: none)")
    actor_lr_decay_steps: int = hp(
        0, "cosine-decay the actor lr over this many updates (0 = off)", low=0
    )
    weight_init: Literal["lecun_normal", "xavier_uniform"] = hp(
        "lecun_normal", "Dense kernel init of noise net and critics (official: xavier_uniform)"
    )


MaxEntDPState = ActorCriticState


def config_warnings(config: MaxEntDPConfig) -> list[str]:
    """Settings that run but mislead. ``temperature=auto`` tunes beta on the entropy estimate
    ``-log pi``; the rectangle rule underestimates ``log pi`` of narrow policies (about -0.8 nats
    per action dimension at std 0.05, docs/benchmarks.md), so the entropy looks higher than it
    is and auto drives beta too low exactly when the policy is already narrow."""
    if config.temperature == "auto" and config.logprob_rule == "rectangle":
        return [
            "temperature=auto with logprob_rule=rectangle: the rectangle rule underestimates "
            "the log-probability of narrow policies (-0.8 nats per action dimension at std "
            "0.05), so auto drives the temperature too low; use logprob_rule=gauss_legendre "
            "with logprob_control_variate=true"
        ]
    return []


def make(config: MaxEntDPConfig, spec: EnvSpec) -> Agent:
    """Build MaxEntDP's pure ``init`` / ``act`` / ``update`` for one env."""
    action_dim = spec.action_dim
    noise_net = NoiseNet(
        action_dim,
        config.actor_hidden_dims,
        layer_norm=config.layer_norm,
        kernel_init=config.weight_init,
    )
    critic = config.critic().clone(kernel_init=config.weight_init)
    actor_optimizer = (
        optax.adam(optax.cosine_decay_schedule(config.actor_lr, config.actor_lr_decay_steps))
        if config.actor_lr_decay_steps
        else config.actor_optimizer()
    )
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(action_dim)

    def init(key: jax.Array) -> MaxEntDPState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params = noise_net.init(actor_key, obs, action, jnp.zeros((1,)))
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

    def eps_fn(actor_params, obs):
        return lambda noisy_action, log_snr: noise_net.apply(
            actor_params, obs, noisy_action, log_snr
        )

    def sample_actions(
        actor_params, obs: jax.Array, key: jax.Array, num_per_state: int | None = None
    ) -> jax.Array:
        """``a ~ pi(.|s)`` (eq. 5), clipped to the action box: obs ``[B, obs_dim]`` ->
        ``[B, A]``, or ``[B, num_per_state, A]``."""
        extra = () if num_per_state is None else (num_per_state,)
        action = diffusion.sample(
            eps_fn(actor_params, obs),
            key,
            (*obs.shape[:-1], *extra, action_dim),
            sampler=config.sampler,
            num_steps=config.num_diffusion_steps,
        )
        return jnp.clip(action, -1.0, 1.0)

    def policy_log_prob(actor_params, obs: jax.Array, action: jax.Array, key) -> jax.Array:
        """``log pi(a|s)`` by numerical integration (Theorem 6): ``[B, A]`` -> ``[B]``."""
        return diffusion.log_prob(
            eps_fn(actor_params, obs),
            key,
            action,
            logprob_rule=config.logprob_rule,
            num_levels=config.num_logprob_levels,
            num_samples=config.num_logprob_samples,
            antithetic=config.logprob_antithetic,
            clip_x0=config.logprob_clip_x0,
            control_variate=config.logprob_control_variate,
        )

    def soft_target(state: MaxEntDPState, batch: Batch, key: jax.Array):
        """Alg. 1 lines 12-14: the soft Bellman target and the entropy estimate it used."""
        sample_key, logprob_key = jax.random.split(key)
        next_action = sample_actions(state.actor_params, batch.next_obs, sample_key)
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(0)
        next_log_prob = policy_log_prob(
            state.actor_params, batch.next_obs, next_action, logprob_key
        )
        temperature = jnp.exp(state.log_temperature)
        next_value = next_q - temperature * next_log_prob if config.entropy_backup else next_q
        target = td_target(batch.reward, batch.terminated, next_value, config.gamma)
        return jax.lax.stop_gradient(target), jax.lax.stop_gradient(-next_log_prob)

    def critic_loss_fn(critic_params, batch: Batch, target: jax.Array):
        """Alg. 1 line 15: mean squared soft Bellman error of each critic."""
        q = critic.apply(critic_params, batch.obs, batch.action)
        loss = jnp.sum(jnp.mean((q - target) ** 2, axis=-1))
        return loss, q

    def qne_target(state: MaxEntDPState, critic_params, batch: Batch, key: jax.Array):
        """Alg. 1 lines 16-17: noise the replay action at a uniform time and estimate the noise
        target exp(Q/beta) implies (eq. 17, or the iDEM / QSM alternatives)."""
        level_key, noise_key, target_key = jax.random.split(key, 3)
        log_snr = diffusion.sample_log_snr(level_key, batch.action.shape[:-1])
        alpha = diffusion.alpha_from_log_snr(log_snr)[..., None]
        sigma = diffusion.sigma_from_log_snr(log_snr)[..., None]
        noisy_action = alpha * batch.action + sigma * jax.random.normal(
            noise_key, batch.action.shape
        )
        q_params = state.target_critic_params if config.qne_target_critic else critic_params

        def q_fn(obs, actions):
            return critic.apply(q_params, obs, actions).min(0)

        target, metrics = diffusion.noise_target(
            target_key,
            batch.obs,
            noisy_action,
            log_snr,
            q_fn,
            temperature=jnp.exp(state.log_temperature),
            num_samples=config.num_qne_samples,
            score_target=config.score_target,
        )
        return noisy_action, log_snr, target, metrics

    def actor_loss_fn(actor_params, obs, noisy_action, log_snr, target):
        """Eq. 18: regress the noise prediction onto the estimated target."""
        prediction = noise_net.apply(actor_params, obs, noisy_action, log_snr)
        return jnp.mean((prediction - target) ** 2)

    def gradient_step(state: MaxEntDPState, batch: Batch, key: jax.Array):
        target_key, qne_key = jax.random.split(key)
        target, entropy = soft_target(state, batch, target_key)
        (critic_loss, q), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic_params, batch, target
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )

        noisy_action, log_snr, noise_target, qne_metrics = qne_target(
            state, critic_params, batch, qne_key
        )
        actor_loss, actor_grads = jax.value_and_grad(actor_loss_fn)(
            state.actor_params, batch.obs, noisy_action, log_snr, noise_target
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )
        target_critic_params = polyak_update(state.target_critic_params, critic_params, config.tau)

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
            "critic_loss": critic_loss,
            "q_mean": q.mean(),
            "actor_loss": actor_loss,
            "entropy": entropy.mean(),
            "temperature": jnp.exp(log_temperature),
            **{f"qne_{name}": value for name, value in qne_metrics.items()},
        }
        return new_state, metrics

    def best_of_candidates(state: MaxEntDPState, obs: jax.Array, key: jax.Array) -> jax.Array:
        """Sample M candidates per state and keep the one with the highest min-Q."""
        candidates = sample_actions(state.actor_params, obs, key, config.eval_candidates)
        q_params = state.target_critic_params if config.qne_target_critic else state.critic_params
        q = critic.apply(q_params, obs, candidates).min(0)  # obs [B, d] lines up with [B, M, A]
        best = jnp.argmax(q, axis=-1)
        return jnp.take_along_axis(candidates, best[:, None, None], axis=1)[:, 0]

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: MaxEntDPState, obs: jax.Array, key: jax.Array, deterministic: bool):
        """``deterministic=True`` is the paper's evaluation mode: best of ``eval_candidates``
        samples by Q (a single sample when M = 1); otherwise one sample of the policy."""
        if deterministic and config.eval_candidates > 1:
            return best_of_candidates(state, obs, key)
        return sample_actions(state.actor_params, obs, key)

    @jax.jit
    def update(state: MaxEntDPState, batch: Batch, key: jax.Array):
        return scan_updates(gradient_step, state, batch, key)

    def critic_gradient(state, batch, key):
        # The target's cost is its own phase; a stand-in target isolates the gradient step.
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, batch, batch.reward)

    def qne_actor_step(state, batch, key):
        noisy_action, log_snr, target, _ = qne_target(state, state.critic_params, batch, key)
        return jax.grad(actor_loss_fn)(state.actor_params, batch.obs, noisy_action, log_snr, target)

    def log_prob_only(state, batch, key):
        return policy_log_prob(state.actor_params, batch.next_obs, batch.action, key)

    phases = {
        "critic target incl. log-prob": jax.jit(soft_target),
        "  of which log-prob": jax.jit(log_prob_only),
        "critic gradient step": jax.jit(critic_gradient),
        "QNE actor step": jax.jit(qne_actor_step),
    }
    return Agent(init=init, act=act, update=update, phases=phases)


# Table B1: beta per Gym MuJoCo task; other envs keep the config default (the code's 0.1).
PAPER_TEMPERATURES = {
    "Ant": 0.05,
    "HalfCheetah": 0.2,
    "Hopper": 0.05,
    "Humanoid": 0.02,
    "Swimmer": 0.01,
    "Walker2d": 0.01,
}

PAPER_VALUES = {"learning_starts": 10_000, "batch_size": 256, "eval_every": 10_000}
PAPER_PER_TASK = {task: {"temperature": beta} for task, beta in PAPER_TEMPERATURES.items()}

# What the official code (diffusionyes/MaxEntDP @ 8adfc7e) does that the paper's text does not say.
OFFICIAL_DIFFERENCES = {
    "sampler": "ddpm",  # stochastic DDPM ancestral sampler with x0 clipped to [-1, 1] per step
    "logprob_clip_x0": True,  # the same x0 clipping inside the log-probability estimate
    "actor_lr_decay_steps": 2_000_000,  # optax cosine decay of the actor lr, per update
    "weight_init": "xavier_uniform",  # jaxrl5's default kernel init, critics and noise net
}

# The `fast` preset's estimators: benchmarks/logprob_error.py measures the log-prob's error with an
# exact denoiser, `diffmaxent bench` the cost.
FAST_ESTIMATORS = {
    "logprob_rule": "gauss_legendre",
    "num_logprob_levels": 12,
    "num_logprob_samples": 8,
    "logprob_control_variate": True,
    "logprob_antithetic": True,
    "num_qne_samples": 100,
}

PRESETS = {
    "paper": Preset(
        PAPER_VALUES,
        "The paper's settings (Tables B2-B3: K=500, T=20, N=50, M=10, batch 256, 10k random "
        "steps) with beta from Table B1 on the six Gym MuJoCo tasks.",
        suite="gym",
        per_task=PAPER_PER_TASK,
    ),
    "official": Preset(
        {**PAPER_VALUES, **OFFICIAL_DIFFERENCES},
        "The official code's behaviour, which made the published curves: `paper` plus the "
        "stochastic DDPM sampler with x0 clipping (sampler=ddpm), x0 clipping inside the "
        "log-probability (logprob_clip_x0), a cosine decay of the actor lr over 2M updates "
        "(actor_lr_decay_steps) and xavier-uniform weights (weight_init); the run script's "
        "per-task beta equal Table B1's.",
        suite="gym",
        per_task=PAPER_PER_TASK,
    ),
    "fast": Preset(
        {**PAPER_VALUES, **FAST_ESTIMATORS},
        "`paper` (widths, batch, 20-step ODE sampler, best of 10) at under 1/5 of its matmul "
        "FLOPs per update: a Gauss-Legendre log-prob with a control variate and antithetic "
        "pairs (96 passes per action instead of 1000; less bias and noise than the paper's rule "
        "at every policy width measured) and K=100 QNE candidates (docs/benchmarks.md).",
        suite="gym",
        per_task=PAPER_PER_TASK,
    ),
    "cpu": Preset(
        {
            "batch_size": 128,
            "num_qne_samples": 32,
            "num_diffusion_steps": 10,
            "sampler": "dpm_solver_2m",
            "logprob_rule": "gauss_legendre",
            "num_logprob_levels": 6,
            "num_logprob_samples": 4,
            "logprob_control_variate": True,
            "layer_norm": True,
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "Small K, T, N and batch, LayerNorm, a second-order sampler and a Gauss-Legendre "
        "log-prob with a control variate: tens of ms per update on 2 CPU cores; learns "
        "Pendulum-v1, and on MultiGoal-v0 (beta 10, learning rates 1e-3) keeps all four goals "
        "in 5 of 6 seeds (docs/benchmarks.md, MultiGoal).",
        per_task={"MultiGoal": {"temperature": 10.0, "actor_lr": 1e-3, "critic_lr": 1e-3}},
    ),
}
