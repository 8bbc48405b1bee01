"""MEow: one energy-based normalising flow that is both the policy and the soft Q-function.

Chao et al., "Maximum Entropy Reinforcement Learning via Energy-Based Normalizing Flow"
(NeurIPS 2024, arXiv:2405.13629). The paper's text was not available to this implementation, so
its parts are named and written out instead of cited by equation number.

* The policy: a state-conditioned flow (:class:`diffmaxent.flows.ConditionalFlow`):
  ``eps ~ N(0, I)``, ``z = sigma(s) eps``, additive couplings ``x = g(z | s)``, ``a = tanh(x)``.
  Its exact log-density splits into the Jacobian terms of the layers that depend on the action and
  those that depend on the state only (EBFlow's energy and log-partition function):
  ``log pi(a|s) = action_term(s, a) - state_term(s)``, with
  ``action_term = -|eps|^2 / 2 - sum log(1 - a^2)`` and
  ``state_term = sum log sigma(s) + (A / 2) log(2 pi)``.
* Soft Q and soft value from the same network: ``Q(s, a) = alpha action_term(s, a)``,
  ``V(s) = alpha state_term(s)``. Then ``pi(a|s) = exp((Q(s, a) - V(s)) / alpha)`` holds by
  construction and ``V(s) = alpha log integral exp(Q(s, a) / alpha) da`` exactly: the soft value
  needs no Monte Carlo estimate and the policy is the Boltzmann policy of its own Q, so there is no
  separate policy-improvement step.
* Training: the soft Bellman residual only,
  ``L = E[(Q(s, a) - r - gamma (1 - terminated) V'(s'))^2]`` with ``V'`` from a Polyak-averaged
  target copy of the flow.
* Learnable reward shifting (LRS) and shifting-based clipped double Q (SCDQ): networks
  ``b_k(s)``, ``k = 1..K``, add to both ``Q`` and ``V`` (``Q_k = alpha (action_term + b_k)``,
  ``V_k = alpha (state_term + b_k)``), which leaves the policy unchanged but lets the values'
  scale be learned apart from the density; the target takes ``min_k V'_k(s')`` and every ``Q_k``
  regresses onto it: ``0.5 sum_k mean_B (Q_k - y)^2``.
* Deterministic inference: the prior's mode ``eps = 0`` pushed through the flow (the code
  implements it for additive couplings with a Gaussian prior, the only flow here).

Defaults are those of the official code (ChienFeng-hub/meow, ``cleanrl/meow_continuous_action.py``
with its per-task tuner scripts), which the paper's MuJoCo results ran; where the library departs
from it or where the code has hidden choices:

* flow: a state-dependent Gaussian prior whose log-std network (2 x 64, zero kernels) is squashed
  into ``[log_std_min, log_std_max] = [-5, -0.3]`` (``log_std_max = 2`` on HalfCheetah), then two
  pairs of additive coupling layers (``num_coupling_pairs``) whose shift networks (2 x 64, on
  ``[m * z, s]``) have orthogonal kernels, LayerNorm and dropout 0.1 while training, then tanh. All
  hidden activations are Swish with a learned slope per unit; zero-kernel networks start with
  PyTorch's default biases, which is what lets them learn (:mod:`diffmaxent.flows`). With one
  action dimension (Pendulum) the couplings that keep the coordinate are the identity and the
  others shift it by a function of the state: the policy is then a tanh-Gaussian;
* two reward-shift networks ``b_1, b_2`` (2 x 256, zero kernels; ``num_critics=2``,
  ``critic_hidden_dims``), ``reward_shifting=false`` drops them. With zero kernels in them and
  in the prior's log-std network, ``V(s)`` starts the same for every state;
  ``state_net_init=orthogonal`` starts them as the coupling networks start;
* the current Q is evaluated once per critic on the same batch, each time with its own
  dropout masks (the code doubles the batch); the target flow and acting run without dropout;
* one Adam over the whole flow at 1e-3 (``critic_lr``) after a global-norm clip at 30
  (``grad_clip_norm``); target update every step with ``tau = 0.005`` (0.003 HalfCheetah,
  0.0001 Ant, 0.0005 Humanoid); batch 256, gamma 0.99, 5000 random steps (10000 HalfCheetah
  and Walker2d);
* a fixed ``alpha`` per task (0.25 Hopper and HalfCheetah, 0.1 Walker2d, 0.05 Ant, 0.125
  Humanoid; 0.2 elsewhere). The code's ``autotune`` option steps an ``alpha`` that never reaches
  its Q and V (they keep the fixed one); here ``temperature=auto`` tunes the alpha that Q and V
  use, towards ``target_entropy`` with SAC's loss on the entropy of fresh samples;
* the code's tuners evaluate sampled actions (``deterministic_action=False``); the library's
  evaluation takes the deterministic action above unless ``eval_deterministic=false``;
* the code zeroes a NaN loss instead of stepping on it; no such guard here;
* MaxEntDP's re-implementation (Dong et al. 2025, Table B2) lists MEow with 2 x 256 ReLU networks
  and learning rate 3e-4; those are not the official code's settings and are not the default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffmaxent.agents.common import (
    Agent,
    apply_gradients,
    polyak_update,
    scan_updates,
    temperature_step,
)
from diffmaxent.agents.groups import (
    ActorNetwork,
    CriticEnsemble,
    Discount,
    TargetEntropy,
    Temperature,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.flows import ConditionalFlow, FlowMLP
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class MEowConfig(
    TargetEntropy,
    with_defaults(Temperature, temperature=0.2, temperature_lr=1e-3),
    with_defaults(ActorNetwork, actor_hidden_dims=(64, 64)),
    CriticEnsemble,
    Discount,
):
    """MEow hyperparameters (defaults: the official code's, see the module docstring).

    The flow is the policy network (``actor_hidden_dims``: its coupling and prior log-std
    networks); critic ``k`` is the flow plus the reward shift ``b_k(s)`` (``num_critics`` of
    them, each a ``critic_hidden_dims`` network)."""

    num_coupling_pairs: int = hp(
        2, "pairs of additive coupling layers (the two mask halves)", low=1
    )
    flow_layer_norm: bool = hp(True, "LayerNorm in the coupling networks")
    flow_dropout: float = hp(
        0.1, "dropout rate of the coupling networks in the loss's Q", low=0.0, high=1.0
    )
    log_std_min: float = hp(-5.0, "lowest log-std of the flow's Gaussian prior")
    log_std_max: float = hp(-0.3, "highest log-std of the flow's Gaussian prior")
    reward_shifting: bool = hp(True, "learned state-dependent shift b_k(s) of Q_k and V_k (LRS)")
    state_net_init: Literal["zeros", "orthogonal"] = hp(
        "zeros", "kernel init of the prior log-std and shift networks (code: zeros, V(s) flat)"
    )
    critic_lr: float = hp(1e-3, "critic (Q or value) Adam learning rate", low=0.0, low_open=True)
    grad_clip_norm: float = hp(
        30.0, "global-norm clip of actor and critic gradients (0 = off)", low=0.0
    )
    tau: float = hp(0.005, "Polyak step of the target critics", low=0.0, high=1.0)

    def network(self, action_dim: int) -> EnergyBasedFlow:
        return EnergyBasedFlow(
            action_dim,
            self.actor_hidden_dims,
            self.num_coupling_pairs,
            self.log_std_min,
            self.log_std_max,
            self.flow_layer_norm,
            self.flow_dropout,
            self.num_critics,
            self.reward_shifting,
            self.critic_hidden_dims,
            self.state_net_init,
        )

    def optimizer(self) -> optax.GradientTransformation:
        adam = optax.adam(self.critic_lr)
        if self.grad_clip_norm > 0:
            return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), adam)
        return adam


class MEowState(struct.PyTreeNode):
    """The flow (policy and soft Q-function at once, kept where the other agents keep their
    critics) with its target copy, the temperature, their optimiser states and the step."""

    critic_params: Any
    target_critic_params: Any
    log_temperature: jax.Array
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    step: jax.Array


class EnergyBasedFlow(nn.Module):
    """The flow and the reward-shift networks, with Q and V in units of the temperature:

    * ``q_over_temperature(obs [B, obs_dim], action [B, A], train) -> [K, B]``:
      ``action_term(s, a) + b_k(s)``; with ``train`` each of the K values has its own dropout
      masks;
    * ``v_over_temperature(obs) -> [K, B]``: ``state_term(s) + b_k(s)``;
    * ``sample``, ``mode``, ``log_prob``: the policy (:class:`ConditionalFlow`).

    ``K = num_critics``; without ``reward_shifting`` ``b = 0`` and the K critics differ only in
    their dropout masks.
    """

    action_dim: int
    hidden_dims: Sequence[int]
    num_coupling_pairs: int
    log_std_min: float
    log_std_max: float
    layer_norm: bool
    dropout_rate: float
    num_critics: int
    reward_shifting: bool
    shift_hidden_dims: Sequence[int]
    state_net_init: Literal["zeros", "orthogonal"]

    def setup(self) -> None:
        self.flow = ConditionalFlow(
            self.action_dim,
            self.hidden_dims,
            self.num_coupling_pairs,
            self.log_std_min,
            self.log_std_max,
            self.layer_norm,
            self.dropout_rate,
            self.state_net_init,
        )
        if self.reward_shifting:
            self.shifts = nn.vmap(
                FlowMLP,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=None,
                out_axes=0,
                axis_size=self.num_critics,
            )(self.shift_hidden_dims, 1, self.state_net_init)

    def reward_shifts(self, obs: jax.Array) -> jax.Array:
        """``b_k(s)``: ``[K, B]`` (zeros without reward shifting)."""
        if not self.reward_shifting:
            return jnp.zeros((self.num_critics, *obs.shape[:-1]), obs.dtype)
        return self.shifts(obs)[..., 0]

    def q_over_temperature(self, obs: jax.Array, action: jax.Array, train: bool) -> jax.Array:
        shifts = self.reward_shifts(obs)
        if train:  # one batch copy per critic, so that each draws its own dropout masks
            obs = jnp.broadcast_to(obs, (self.num_critics, *obs.shape))
            action = jnp.broadcast_to(action, (self.num_critics, *action.shape))
        action_term, _ = self.flow.log_density_terms(obs, action, train)
        return action_term + shifts

    def v_over_temperature(self, obs: jax.Array) -> jax.Array:
        return self.flow.state_term(obs) + self.reward_shifts(obs)

    def sample(self, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.flow.sample(obs, key)

    def mode(self, obs: jax.Array) -> jax.Array:
        return self.flow.mode(obs)

    def log_prob(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.flow.log_prob(obs, action)

    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Creates every parameter (``init``): ``Q / alpha [K, B]`` in evaluation mode."""
        return self.q_over_temperature(obs, action, train=False)


# --- the soft Bellman residual: a pure function of the network, the parameters and the batch ----


def soft_q(model: EnergyBasedFlow, params, obs, action, temperature, key) -> jax.Array:
    """``Q_k(s, a) = alpha (action_term(s, a) + b_k(s))`` with the training-mode dropout:
    ``[K, B]``."""
    q = model.apply(params, obs, action, True, method="q_over_temperature", rngs={"dropout": key})
    return temperature * q


def soft_value(model: EnergyBasedFlow, params, obs, temperature) -> jax.Array:
    """``V_k(s) = alpha (state_term(s) + b_k(s)) = alpha log integral exp(Q_k(s, a) / alpha) da``:
    ``[K, B]``."""
    return temperature * model.apply(params, obs, method="v_over_temperature")


def soft_bellman_target(
    reward: jax.Array,
    terminated: jax.Array,
    next_value: jax.Array,
    gamma: float,
) -> jax.Array:
    """``r + gamma (1 - terminated) min_k V'_k(s')`` (SCDQ's clipped double value):
    ``next_value [K, B]`` -> ``[B]``."""
    return td_target(reward, terminated, next_value.min(axis=0), gamma)


def soft_bellman_loss(
    model: EnergyBasedFlow,
    gamma: float,
    params,
    state: MEowState,
    batch: Batch,
    key: jax.Array,
):
    """``0.5 sum_k mean_B (Q_k(s, a) - y)^2``, ``y`` the target from the target flow (gradient
    stopped): ``(loss, metrics)``."""
    temperature = jnp.exp(state.log_temperature)
    next_value = soft_value(model, state.target_critic_params, batch.next_obs, temperature)
    target = soft_bellman_target(batch.reward, batch.terminated, next_value, gamma)
    q = soft_q(model, params, batch.obs, batch.action, temperature, key)
    loss = 0.5 * jnp.sum(jnp.mean((q - jax.lax.stop_gradient(target)) ** 2, axis=-1))
    return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}


def make(config: MEowConfig, spec: EnvSpec) -> Agent:
    """Build MEow's pure ``init`` / ``act`` / ``update`` for one env."""
    model = config.network(spec.action_dim)
    optimizer = config.optimizer()
    temperature_optimizer = config.temperature_optimizer()
    target_entropy = config.target_entropy_value(spec.action_dim)

    def init(key: jax.Array) -> MEowState:
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, spec.action_dim), jnp.float32)
        params = model.init(key, obs, action)
        log_temperature = config.initial_log_temperature()
        return MEowState(
            critic_params=params,
            target_critic_params=params,
            log_temperature=log_temperature,
            critic_opt_state=optimizer.init(params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            step=jnp.zeros((), jnp.int32),
        )

    loss_fn = functools.partial(soft_bellman_loss, model, config.gamma)

    def gradient_step(state: MEowState, batch: Batch, key: jax.Array) -> tuple[MEowState, Metrics]:
        loss_key, sample_key = jax.random.split(key)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(
            state.critic_params, state, batch, loss_key
        )
        params, opt_state = apply_gradients(
            optimizer, state.critic_params, state.critic_opt_state, grads
        )
        # The entropy of the updated policy at the batch states (what temperature=auto tunes).
        _, log_prob = model.apply(params, batch.obs, sample_key, method="sample")
        entropy = -log_prob
        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            config.learns_temperature,
        )
        new_state = state.replace(
            critic_params=params,
            target_critic_params=polyak_update(state.target_critic_params, params, config.tau),
            log_temperature=log_temperature,
            critic_opt_state=opt_state,
            temperature_opt_state=temperature_opt_state,
            step=state.step + 1,
        )
        metrics = {
            **metrics,
            "entropy": entropy.mean(),
            "temperature": jnp.exp(log_temperature),
        }
        return new_state, metrics

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: MEowState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        """A sample of the flow, or its deterministic action: the prior's mode pushed through."""
        if deterministic:
            return model.apply(state.critic_params, obs, method="mode")
        return model.apply(state.critic_params, obs, key, method="sample")[0]

    @jax.jit
    def update(state: MEowState, batch: Batch, key: jax.Array) -> tuple[MEowState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def soft_bellman_step(state: MEowState, batch: Batch, key: jax.Array):
        return jax.grad(loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    phases = {"soft Bellman step": jax.jit(soft_bellman_step)}
    return Agent(init=init, act=act, update=update, phases=phases)


# The official tuner scripts' per-task settings (cleanrl/tuner_meow_*.py).
OFFICIAL_PER_TASK = {
    "Hopper": {"temperature": 0.25, "tau": 0.005},
    "HalfCheetah": {
        "temperature": 0.25,
        "tau": 0.003,
        "log_std_max": 2.0,
        "learning_starts": 10_000,
    },
    "Walker2d": {"temperature": 0.1, "tau": 0.005, "learning_starts": 10_000},
    "Ant": {"temperature": 0.05, "tau": 0.0001},
    "Humanoid": {"temperature": 0.125, "tau": 0.0005},
}

PRESETS = {
    "paper": Preset(
        {"learning_starts": 5_000, "batch_size": 256, "eval_every": 10_000},
        "The official code's settings (flow of 2 coupling pairs with 2 x 64 Swish networks, two "
        "2 x 256 reward shifts, Adam 1e-3 clipped at norm 30, fixed alpha, 5k random steps) and "
        "its tuners' per-task alpha, tau, prior log-std bound and warm-up.",
        suite="gym",
        per_task=OFFICIAL_PER_TASK,
    ),
    "cpu": Preset(
        {"critic_hidden_dims": (64, 64), "learning_starts": 1_000, "eval_every": 1_000},
        "The official flow with 2 x 64 reward shifts (a third of the update time); random "
        "warm-up and evaluation sized for short CPU runs on Pendulum-v1.",
    ),
}
