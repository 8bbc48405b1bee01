"""DIME: diffusion-based maximum-entropy RL (Celik et al., ICML 2025, arXiv:2502.02316).

* Policy: the controlled OU diffusion of :mod:`diffmaxent.diffusion.dime` (16 Euler-Maruyama
  steps from N(0, 2.5^2), learned step size and friction, tanh squashing). One sampled chain gives
  the action and its cost ``c = running + terminal``, the one-sample estimate of ``log pi(a|s)``
  from the path-space entropy lower bound; it replaces SAC's log-probability everywhere.
* Critic: CrossQ style (:class:`diffmaxent.critics.CrossQCritic`): BatchRenorm, no target
  network, ``(s, a)`` and ``(s', a')`` in one batch; categorical over 101 atoms on
  ``[v_min, v_max]`` (or ``critic_type=scalar``); soft target
  ``r + gamma (1 - d) (Z(s', a') - alpha c(s'))`` with ``a'`` and ``c(s')`` from one fresh chain.
* Actor (policy improvement on the lower bound): minimise ``E_s[-Q(s, a) + alpha c(s)]``, the
  reparameterised chain backpropagated through all steps, with Q the **mean** of the two critics
  in evaluation mode.
* Temperature: ``alpha`` fixed, or tuned by SAC's rule (log-space Adam) on one of two targets
  (``temperature_target``):

  - ``running_cost`` (default; the official code): drive the mean **running** cost (the prior
    term left out) towards ``4 |A|``; the config key the code exposes for it is never read, the
    value is hard-coded. Since ``E[terminal] = -|A| log(2 pi e 2.5^2) / 2 = -2.335 |A|``, this is a
    target of about ``-1.67`` nats per dimension on the full bound;
  - ``bound``: drive the full entropy bound towards ``target_entropy_per_dim * |A|`` (``auto`` =
    -1 per dimension, SAC's rule).

  The code multiplies its temperature loss by ``alpha``, not ``log alpha``; under Adam the two
  give the same direction and almost the same steps, and we use the log form every agent here
  shares.
* Schedule: each ``update`` call scans over ``updates_per_step`` (UTD, 2 in the presets) critic
  steps; the actor and temperature step after every ``policy_delay``-th (3) critic step, inside
  the scan (``lax.cond`` on the step counter).

Official code. Defaults are the official code's (ALRhub/DIME), with its hidden choices exposed: mean
(not min) of the critics in the actor and in the target (``q_reduce``); the 0.005 entropy bonus on
the critic's distributions (``critic_entropy_coef``); Adam ``b1 = 0.5`` for actor and critic
(``adam_b1``); the actor gradient clipped elementwise to +-1 after zeroing NaNs
(``actor_grad_clip``); BatchRenorm warm-up of 100k critic steps (``bn_warmup``). Evaluation: the
code ignores ``deterministic`` and samples the chain (``deterministic_action=sample``, default);
``zero_noise`` runs the chain without noise instead. The code's "target actor" is a hard copy after
every actor step, i.e. the current actor, so there is none here.
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
    CrossQStyleState,
    policy_delayed_step,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    MJX_THROUGHPUT,
    CrossQCriticSettings,
    CrossQOptimisers,
    Discount,
    PriorChain,
    Temperature,
)
from diffmaxent.config import AUTO, Preset, hp, with_defaults
from diffmaxent.diffusion.dime import DIMEPolicy
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.types import Batch, Metrics

# The official hard-coded temperature target: mean running cost -> 4 |A|.
OFFICIAL_RUNNING_COST_PER_DIM = 4.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DIMEConfig(
    with_defaults(PriorChain, num_diffusion_steps=16, actor_hidden_dims=(256, 256, 256)),
    CrossQCriticSettings,
    with_defaults(Temperature, temperature_lr=1e-3),
    CrossQOptimisers,
    Discount,
):
    """DIME hyperparameters; defaults are the official code's (see the module docstring)."""

    actor_grad_clip: float = hp(1.0, "elementwise actor gradient clip (0 = off)", low=0.0)
    init_dt: float = hp(0.1, "initial overall step size dt", low=0.0, low_open=True)
    init_friction: float = hp(1.0, "initial friction per action dim", low=0.0, low_open=True)
    learn_dt: bool = hp(True, "learn the overall step size")
    learn_friction: bool = hp(True, "learn the per-dimension friction")
    time_dim: int = hp(256, "width of the time encoder", low=1)
    num_frequencies: int = hp(256, "Fourier frequencies of the step index", low=1)
    temperature_target: Literal["running_cost", "bound"] = hp(
        "running_cost",
        "auto alpha tunes: running_cost (official, towards 4|A|) or bound (full entropy bound)",
    )
    target_entropy_per_dim: float | Literal["auto"] = hp(
        AUTO, "target per action dim when temperature_target=bound; auto = -1"
    )
    temperature_loss: Literal["log_alpha", "alpha"] = hp(
        "log_alpha",
        "auto alpha's loss: log_alpha (SAC's, as every agent here) or alpha (the official code)",
    )
    deterministic_action: Literal["sample", "zero_noise"] = hp(
        "sample", "act(deterministic=True): sample (official) or the noiseless chain"
    )


DIMEState = CrossQStyleState


ACTOR_METRICS = ("actor_loss", "entropy", "running_cost", "terminal_cost", "dt", "friction")


def make_policy(config: DIMEConfig, action_dim: int) -> DIMEPolicy:
    """The agent's sampler, for reading a trained state's chains (costs included) from outside."""
    return DIMEPolicy(
        action_dim,
        hidden_dims=config.actor_hidden_dims,
        num_steps=config.num_diffusion_steps,
        prior_std=config.prior_std,
        init_dt=config.init_dt,
        init_friction=config.init_friction,
        learn_dt=config.learn_dt,
        learn_friction=config.learn_friction,
        time_dim=config.time_dim,
        num_frequencies=config.num_frequencies,
    )


def make(config: DIMEConfig, spec: EnvSpec) -> Agent:
    """Build DIME's pure ``init`` / ``act`` / ``update`` for one env."""
    action_dim = spec.action_dim
    policy = make_policy(config, action_dim)
    critic = config.critic(spec.obs_dim, action_dim)
    clip = [optax.clip(config.actor_grad_clip)] if config.actor_grad_clip > 0 else []
    actor_optimizer = optax.chain(optax.zero_nans(), *clip, config.actor_optimizer())
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    if config.temperature_target == "running_cost":
        # The entropy proxy is -running_cost; the official target is running_cost = 4|A|.
        target_entropy = -OFFICIAL_RUNNING_COST_PER_DIM * action_dim
    else:
        per_dim = -1.0 if config.target_entropy_per_dim == AUTO else config.target_entropy_per_dim
        target_entropy = float(per_dim) * action_dim

    def init(key: jax.Array) -> DIMEState:
        actor_key, critic_key = jax.random.split(key)
        actor_params = policy.init(actor_key, spec.obs_dim)
        critic_params, batch_stats = critic.init(critic_key)
        log_temperature = config.initial_log_temperature()
        return DIMEState(
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

    def critic_loss_fn(critic_params, state: DIMEState, batch: Batch, key: jax.Array):
        """Policy evaluation: the distributional soft Bellman backup with the chain's cost as
        the entropy term (CrossQ's joint batch, no target network)."""
        following = policy.sample(state.actor_params, batch.next_obs, key)
        return critic.loss(
            critic_params,
            state.critic_batch_stats,
            batch,
            following.action,
            following.cost,
            jnp.exp(state.log_temperature),
            config.gamma,
        )

    def actor_loss_fn(actor_params, critic_params, batch_stats, log_temperature, obs, key):
        """Policy improvement on the lower bound: ``mean[-Q(s, a) + alpha (running + terminal)]``
        with ``a`` and the costs from one reparameterised chain."""
        sample = policy.sample(actor_params, obs, key)
        q = critic.reduce(critic.q_values(critic_params, batch_stats, obs, sample.action))
        loss = jnp.mean(-q + jnp.exp(log_temperature) * sample.cost)
        return loss, sample

    def official_temperature_loss(log_temperature, entropy):
        # The code's -alpha (running - 4|A|): in log alpha its gradient is alpha times SAC's, so
        # while alpha falls Adam's steps shrink (the second moment remembers the larger alpha).
        gap = jax.lax.stop_gradient(jnp.mean(entropy) - target_entropy)
        return jnp.exp(log_temperature) * gap

    def temperature_update(log_temperature, opt_state, entropy):
        if config.temperature_loss == "log_alpha" or not config.learns_temperature:
            return temperature_step(
                log_temperature,
                opt_state,
                temperature_optimizer,
                entropy,
                target_entropy,
                config.learns_temperature,
            )
        grad = jax.grad(official_temperature_loss)(log_temperature, entropy)
        updates, opt_state = temperature_optimizer.update(grad, opt_state, log_temperature)
        return optax.apply_updates(log_temperature, updates), opt_state

    def entropy_estimate(sample) -> jax.Array:
        if config.temperature_target == "running_cost":
            return -sample.running_cost
        return sample.entropy_bound

    def actor_step(state: DIMEState, critic_params, batch_stats, obs, key):
        (loss, sample), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            state.actor_params, critic_params, batch_stats, state.log_temperature, obs, key
        )
        updates, actor_opt_state = actor_optimizer.update(
            grads, state.actor_opt_state, state.actor_params
        )
        actor_params = optax.apply_updates(state.actor_params, updates)
        log_temperature, temperature_opt_state = temperature_update(
            state.log_temperature, state.temperature_opt_state, entropy_estimate(sample)
        )
        metrics = {
            "actor_loss": loss,
            "entropy": jnp.mean(sample.entropy_bound),
            "running_cost": jnp.mean(sample.running_cost),
            "terminal_cost": jnp.mean(sample.terminal_cost),
            "dt": jax.nn.softplus(state.actor_params["dt"]),
            "friction": jnp.mean(jax.nn.softplus(state.actor_params["friction"])),
        }
        return actor_params, actor_opt_state, log_temperature, temperature_opt_state, metrics

    gradient_step = functools.partial(
        policy_delayed_step,
        critic_loss_fn=critic_loss_fn,
        critic_optimizer=critic_optimizer,
        actor_step=actor_step,
        policy_delay=config.policy_delay,
    )

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: DIMEState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        zero_noise = deterministic and config.deterministic_action == "zero_noise"
        return policy.sample(state.actor_params, obs, key, zero_noise=zero_noise).action

    @jax.jit
    def update(state: DIMEState, batch: Batch, key: jax.Array) -> tuple[DIMEState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_gradient(state: DIMEState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def next_action_chain(state: DIMEState, batch: Batch, key: jax.Array):
        return policy.sample(state.actor_params, batch.next_obs, key)

    def actor_gradient(state: DIMEState, batch: Batch, key: jax.Array):
        return jax.grad(actor_loss_fn, has_aux=True)(
            state.actor_params,
            state.critic_params,
            state.critic_batch_stats,
            state.log_temperature,
            batch.obs,
            key,
        )

    def chain_gradient(state: DIMEState, batch: Batch, key: jax.Array):
        # The actor step without the critic: a stand-in objective on the same chain.
        def objective(actor_params):
            sample = policy.sample(actor_params, batch.obs, key)
            return jnp.mean(sample.cost) + jnp.mean(sample.action)

        return jax.grad(objective)(state.actor_params)

    phases = {
        "critic step incl. chain": jax.jit(critic_gradient),
        "  of which chain (B)": jax.jit(next_action_chain),
        "actor step (chain+backprop)": jax.jit(actor_gradient),
        "  of which chain+backprop": jax.jit(chain_gradient),
    }
    return Agent(init=init, act=act, update=update, phases=phases)


def _support(v_max: float) -> dict:
    return {"v_min": -v_max, "v_max": v_max}


# The official settings (16 steps, 3x256 actor, 2x2048 critic, UTD 2, policy delay 3, batch 256,
# 5k random steps, stochastic evaluation); only the critic's support changes between families.
PAPER = {
    "batch_size": 256,
    "learning_starts": 5_000,
    "updates_per_step": 2,
    "buffer_size": 1_000_000,
    "eval_every": 3_000,
    "eval_episodes": 5,
    "eval_deterministic": False,
}
PAPER_NOTE = "The official code's settings (ALRhub/DIME) with the critic support of its {} runs."

PRESETS = {
    "paper-dmc": Preset({**PAPER, **_support(200.0)}, PAPER_NOTE.format("DMC"), suite="dmc"),
    "paper-gym": Preset({**PAPER, **_support(1600.0)}, PAPER_NOTE.format("Gym"), suite="gym"),
    "paper-myo": Preset(
        {**PAPER, **_support(200.0)},
        "The official code's settings; it states no support for MyoSuite (whose success rewards "
        "are small) and this keeps its shipped +-200.",
        suite="myo",
    ),
    "official": Preset(
        {**PAPER, **_support(200.0), "temperature_loss": "alpha"},
        "The official code as shipped (ALRhub/DIME: its default config, DMC's +-200 support; its "
        "Gym runs add v_min=-1600 v_max=1600). One difference from paper-dmc: the temperature "
        "loss is the code's -alpha (running cost - 4|A|), not log(alpha) times the same gap "
        "(temperature_loss=alpha): under Adam the two take the same first step, and the code's "
        "steps shrink while alpha falls.",
        suite="dmc",
    ),
    "mjx": Preset(
        {
            **PAPER,
            **_support(200.0),
            **MJX_THROUGHPUT,
        },
        "paper-dmc's networks, critic and learning rates at the sampling scale of sac's mjx "
        "preset (MuJoCo Playground's Brax SAC): 128 envs, batch 512, 8 gradient steps per step "
        "of all envs (one per 16 env steps instead of the paper's 2 per env step), 4M replay "
        "rows, 8,192 random steps. Not from the DIME paper, which ran on CPU simulators.",
        suite="mjx",
    ),
    "cpu": Preset(
        {
            "actor_hidden_dims": (128, 128, 128),
            "critic_hidden_dims": (256, 256),
            "time_dim": 64,
            "num_frequencies": 64,
            "num_diffusion_steps": 4,
            "bn_warmup": 10_000,
            "batch_size": 128,
            "updates_per_step": 2,
            "learning_starts": 1_000,
            "eval_every": 1_000,
            **_support(1600.0),
        },
        "A narrow critic and few diffusion steps: a few tens of ms per env step on 2 cores, with "
        "Gym's +-1600 support. On MultiGoal alpha is fixed at 25 with 8 steps and actor and "
        "critic lr 1e-3: every goal in >= 10% of 50 sampled episodes in seeds 0-2 (alpha 20 or "
        "25 at lr 3e-4 lost a goal in some seed). On "
        "the one-step mixture task of benchmarks/dime_boltzmann.py (rewards in [-24, 1.4]) the "
        "Boltzmann optimum needs 8 steps, prior std 1, actor lr 1e-3 and a +-50 support: with "
        "any one of them left at the base value a mode was lost or under 70% of the samples were "
        "near a mode (docs/benchmarks.md).",
        per_task={
            "MultiGoal": {
                "temperature": 25.0,
                "num_diffusion_steps": 8,
                "actor_lr": 1e-3,
                "critic_lr": 1e-3,
            },
            "MixtureBandit": {
                "num_diffusion_steps": 8,
                "prior_std": 1.0,
                "actor_lr": 1e-3,
                **_support(50.0),
            },
        },
    ),
}
