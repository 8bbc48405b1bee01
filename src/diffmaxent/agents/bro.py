"""BRO: Bigger, Regularized, Optimistic.

Nauman, Ostaszewski, Jankowski, Miłoś and Cygan, "Bigger, Regularized, Optimistic: scaling for
compute and sample-efficient continuous control" (NeurIPS 2024), arXiv:2405.16158. SAC
(Haarnoja et al. 2018b) with:

* **Bigger**: wide BroNet critics (:class:`~diffmaxent.critics.BroNet`: Dense -> LayerNorm ->
  ReLU, then residual blocks ``x + LN(W_2 relu(LN(W_1 x)))``; 512 wide, 2 blocks) and a high
  replay ratio (10 gradient steps per env step; BRO (Fast): 2);
* **Regularized**: LayerNorm after every Dense layer, AdamW weight decay, and full resets of
  the networks, their optimisers and the dual variables at fixed points of training;
* **Optimistic**: a quantile critic (QR-DQN's quantile Huber loss on 100 quantiles) used without
  pessimism, and a second, optimistic policy for exploration (OAC-style dual actor, Ciosek et al.
  2019) whose mean is shifted from the conservative policy's towards a higher upper bound.

The losses of one gradient step, in the official code's order (``n`` critics with quantiles
``theta_j(s, a) [N]``, ``mean_j`` / ``std_j`` over critics, ``std`` the population std, which
is ``|theta_1 - theta_2| / 2`` for two):

1. critic (quantile Huber): the target quantiles ``y = r + gamma (1 - terminated)
   (mean_j theta'_j(s', a') - beta_lb std_j theta'_j(s', a') - alpha log pi(a'|s'))`` with
   ``a' ~ pi(.|s')`` and the target critics ``theta'``; each critic's quantiles regress on all of
   ``y`` (:func:`~diffmaxent.critics.quantile_huber_loss`, kappa 1), summed over critics;
2. Polyak-averaged target critics (tau 0.005);
3. conservative actor: ``mean(alpha log pi(a|s) - Q_lb(s, a))``, ``a ~ pi`` reparameterised,
   ``Q_lb = mean over quantiles of (mean_j theta_j - beta_lb std_j theta_j)``;
4. optimistic actor: ``pi_o(.|s) = tanh N(mu_c(s) + shift(s, mu_c(s)), m sigma_c(s))`` with the
   conservative ``mu_c, sigma_c`` (gradient stopped) and ``m`` = ``std_multiplier``; it minimises
   ``-mean(Q_ub(s, a_o)) + tau_KL mean(KL)``, ``a_o ~ pi_o``, ``Q_ub = mean over quantiles of
   (mean_j theta_j + beta_o std_j theta_j)``, ``KL = KL(N(mu_o, sigma_o / m) || N(mu_c,
   sigma_c))`` (the code's KL: it measures the mean shift only, as ``sigma_o / m = sigma_c``);
5. temperature towards the target entropy ``-|A| / 2``;
6. dual ascent on the optimism ``beta_o`` and the KL weight ``tau_KL`` towards a KL target of
   0.05 nats per action dimension: ``beta_o`` minimises ``(beta_o - beta_lb)(KL / |A| - target)``
   (less optimism while the optimistic policy strays too far), ``tau_KL`` minimises ``-tau_KL
   (KL / |A| - target)`` (a stronger pull back). Both are ``exp`` of a tanh-bounded log,
   ``log v in [-10, 7.5]``, stepped by Adam (lr 3e-5, beta1 0.5).

Exploration samples the optimistic policy; evaluation takes the conservative policy's mean.

Resets happen inside the jitted update, before the gradient step whose index (``state.step``,
the loop's ``updates`` counter) is in ``reset_at_updates``; the fresh parameters are drawn with a
key carried in the state, so a run resumed from a checkpoint resets exactly as an uninterrupted
one. The paper gives its reset points in env steps ``E``; with ``learning_starts = L`` and
``updates_per_step = k`` that is gradient step ``(E - L) k`` (:func:`reset_points`).

Paper vs official code (``naumix/BiggerRegularizedOptimistic``, ``jaxrl/bro``); where they
differ the paper is the default and the code an option:

* hidden defaults of the code, used here: critic BroNet 512 wide with 2 blocks, actor and
  optimistic actor BroNet 256 wide with 1 block, orthogonal weights (scale sqrt 2; the optimistic
  shift's output layer 0.01, no bias; log-std layer 1), log-std squashed into [-10, 2]; AdamW
  (lr 3e-4, weight decay 1e-4 on every parameter) for actor, optimistic actor and critics;
  temperature Adam lr 3e-4 with beta1 0.5, initial temperature 1, target entropy ``-|A| / 2``;
  100 quantiles, kappa 1, pessimism ``beta_lb = 0``; initial optimism 1, initial KL weight 0.25,
  KL target 0.05 per action dimension, std multiplier 0.75; batch 128, 2,500 random steps,
  discount 0.99, tau 0.005; evaluation (5 episodes) of ``tanh(mu_c)``;
* resets: the code resets every network, optimiser state and dual variable at env steps 15,001,
  50,001, 250,001, 500,001, 750,001, 1M+1, 1.5M+1, 2M+1 (BRO (Fast), 2 updates per step: 15,001
  only). The paper's resets are full-parameter resets (D'Oro et al. 2023), fresh draws from the
  initial distribution: default ``reset_draw=fresh``. The code re-creates the networks from the
  run's own seed, i.e. returns them to exactly their initial parameters: ``reset_draw=initial``.
  ``reset_networks`` resets a subset;
* ``quantile_critic=false`` is the code's scalar alternative (the two critics' squared errors
  to one target, summed);
* the code's temperature loss is ``alpha (H - H_target)``, here the library's ``log alpha (H -
  H_target)`` (:func:`~diffmaxent.agents.common.temperature_loss`); both gradients have alpha's
  sign, and Adam's step barely depends on their scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

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
    Discount,
    Optimisers,
    TargetCritics,
    TargetEntropy,
    Temperature,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import (
    BRO_KERNEL_INIT,
    BroCriticEnsemble,
    BroNet,
    quantile_huber_loss,
    quantile_midpoints,
    td_target,
)
from diffmaxent.distributions import squashed_gaussian_sample
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.errors import UsageError
from diffmaxent.nn import orthogonal_init
from diffmaxent.types import Batch, Metrics

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0
DUAL_LOG_MIN, DUAL_LOG_MAX = -10.0, 7.5
PAPER_LEARNING_STARTS = 2_500
PAPER_RESET_ENV_STEPS = (
    15_001,
    50_001,
    250_001,
    500_001,
    750_001,
    1_000_001,
    1_500_001,
    2_000_001,
)
FAST_RESET_ENV_STEPS = (15_001,)


def reset_points(
    env_steps: tuple[int, ...], learning_starts: int, updates_per_step: int
) -> tuple[int, ...]:
    """The gradient-step indices of resets given at env steps ``env_steps``: the replay loop
    updates from env step ``learning_starts`` on, ``updates_per_step`` steps at a time, so the
    reset before env step ``E``'s updates comes after ``(E - learning_starts) updates_per_step``
    gradient steps."""
    return tuple((step - learning_starts) * updates_per_step for step in env_steps)


# Which state fields each name of ``reset_networks`` re-draws (its optimiser states included).
RESET_PARTS: dict[str, tuple[str, ...]] = {
    "actor": ("actor_params", "actor_opt_state"),
    "optimistic_actor": ("optimistic_actor_params", "optimistic_actor_opt_state"),
    "critic": ("critic_params", "target_critic_params", "critic_opt_state"),
    "temperature": ("log_temperature", "temperature_opt_state"),
    "duals": ("raw_optimism", "raw_kl_weight", "optimism_opt_state", "kl_weight_opt_state"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BROConfig(
    with_defaults(ActorNetwork, actor_hidden_dims=(256, 256)),
    with_defaults(TargetCritics, critic_hidden_dims=(512, 512, 512)),
    TargetEntropy,
    Temperature,
    Optimisers,
    Discount,
):
    """BRO's hyperparameters (defaults: the official code, ``configs/bro_default.py`` and
    ``BRO.__init__``). ``actor_hidden_dims`` / ``critic_hidden_dims`` are BroNets: the width of
    the first layer and residual stream, then one entry per residual block (its inner width)."""

    AUTO_ENTROPY_PER_DIM: ClassVar[float] = -0.5

    weight_decay: float = hp(1e-4, "AdamW decoupled weight decay of actors and critics", low=0.0)
    quantile_critic: bool = hp(True, "quantile critic (quantile Huber); false: scalar critic")
    num_quantiles: int = hp(100, "quantiles each critic estimates", low=1)
    huber_kappa: float = hp(1.0, "threshold of the quantile Huber loss", low=0.0, low_open=True)
    pessimism: float = hp(
        0.0, "beta_lb: std of the critics subtracted in targets and actor", low=0.0
    )
    init_optimism: float = hp(1.0, "initial beta_o (critics' std added for exploration)", low=0.0)
    init_kl_weight: float = hp(0.25, "initial weight of the optimistic policy's KL", low=0.0)
    kl_target: float = hp(0.05, "KL of optimistic to conservative policy per action dim", low=0.0)
    std_multiplier: float = hp(
        0.75, "optimistic policy std / conservative std", low_open=True, low=0.0
    )
    optimism_lr: float = hp(
        3e-5, "Adam learning rate of optimism and KL weight", low=0.0, low_open=True
    )
    resets: bool = hp(True, "reset networks at the gradient steps reset_at_updates")
    reset_at_updates: tuple[int, ...] = hp(
        reset_points(PAPER_RESET_ENV_STEPS, PAPER_LEARNING_STARTS, 10),
        "gradient steps before which the networks are reset (the loop's updates counter)",
        low=0,
    )
    reset_networks: tuple[str, ...] = hp(
        tuple(RESET_PARTS), f"what a reset re-draws, of {', '.join(RESET_PARTS)}"
    )
    reset_draw: Literal["fresh", "initial"] = hp(
        "fresh", "reset to a fresh draw (paper) or to the initial parameters (official code)"
    )

    def actor_optimizer(self) -> optax.GradientTransformation:
        return optax.adamw(self.actor_lr, weight_decay=self.weight_decay)

    def critic_optimizer(self) -> optax.GradientTransformation:
        return optax.adamw(self.critic_lr, weight_decay=self.weight_decay)

    def temperature_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.temperature_lr, b1=0.5)

    def dual_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.optimism_lr, b1=0.5)

    def critic(self) -> BroCriticEnsemble:
        outputs = self.num_quantiles if self.quantile_critic else 1
        return BroCriticEnsemble(self.critic_hidden_dims, outputs, self.num_critics)


class BROState(struct.PyTreeNode):
    """Conservative and optimistic actors, critics with target copies, the temperature and the
    two dual variables (as unbounded raw values), their optimiser states, the key of the next
    reset's draw and the gradient step."""

    actor_params: Any
    optimistic_actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_temperature: jax.Array
    raw_optimism: jax.Array
    raw_kl_weight: jax.Array
    actor_opt_state: optax.OptState
    optimistic_actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    optimism_opt_state: optax.OptState
    kl_weight_opt_state: optax.OptState
    reset_key: jax.Array
    step: jax.Array


# --- the two policies ----------------------------------------------------------------------------


class BroActor(nn.Module):
    """The conservative policy: obs ``[B, obs_dim]`` -> mean and log-std ``[B, A]`` of the
    pre-tanh Gaussian, log-std squashed into ``[LOG_STD_MIN, LOG_STD_MAX]``."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = BroNet(self.hidden_dims)(obs)
        mean = nn.Dense(self.action_dim, kernel_init=BRO_KERNEL_INIT)(features)
        raw = jnp.tanh(nn.Dense(self.action_dim, kernel_init=orthogonal_init(1.0))(features))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (raw + 1.0)
        return mean, log_std


class OptimisticShift(nn.Module):
    """The optimistic policy's mean shift: ``[obs, mu_c] [B, obs_dim + A]`` -> ``[B, A]``, a
    BroNet with a small, bias-free output layer (the shift starts near zero)."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array, conservative_mean: jax.Array) -> jax.Array:
        features = BroNet(self.hidden_dims)(jnp.concatenate([obs, conservative_mean], axis=-1))
        return nn.Dense(self.action_dim, use_bias=False, kernel_init=orthogonal_init(0.01))(
            features
        )


def optimistic_gaussian(
    shift: OptimisticShift,
    shift_params,
    obs: jax.Array,
    conservative_mean: jax.Array,
    conservative_log_std: jax.Array,
    std_multiplier: float,
) -> tuple[jax.Array, jax.Array]:
    """``(mu_o, log sigma_o) [B, A]``: ``mu_c + shift(s, mu_c)`` and ``log(m sigma_c)``; the
    conservative parameters enter with their gradient stopped."""
    conservative_mean = jax.lax.stop_gradient(conservative_mean)
    conservative_log_std = jax.lax.stop_gradient(conservative_log_std)
    mean = conservative_mean + shift.apply(shift_params, obs, conservative_mean)
    return mean, conservative_log_std + math.log(std_multiplier)


def gaussian_kl(
    mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array
) -> jax.Array:
    """``KL(N(mean_p, std_p^2) || N(mean_q, std_q^2))`` of diagonal Gaussians, summed over the
    last axis: ``[..., A]`` -> ``[...]``."""
    variance_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (mean_p - mean_q) ** 2 * jnp.exp(-2.0 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + 0.5 * (variance_ratio + mean_term) - 0.5, axis=-1)


# --- bounds on the critics' values ---------------------------------------------------------------


def disagreement(quantiles: jax.Array) -> jax.Array:
    """Half the mean absolute difference between two critics, over all pairs: ``[n, B, N]`` ->
    ``[B, N]``; ``|theta_1 - theta_2| / 2`` for two (the code's). Unlike a standard deviation
    (a square root) its gradient stays finite where critics agree exactly, which matters even at
    weight 0: ``0 * inf`` is NaN."""
    num_critics = quantiles.shape[0]
    pairs = jnp.abs(quantiles[:, None] - quantiles[None, :]).sum(axis=(0, 1))
    return pairs / (2.0 * max(num_critics * (num_critics - 1), 1))


def critic_bound(quantiles: jax.Array, disagreement_weight: jax.Array | float) -> jax.Array:
    """``mean_j theta_j + w disagreement(theta)``: ``[n, B, N]`` -> ``[B, N]``. ``w = -beta_lb``
    gives the lower bound, ``w = beta_o`` the optimistic upper bound."""
    return jnp.mean(quantiles, axis=0) + disagreement_weight * disagreement(quantiles)


def bounded_exp(raw: jax.Array) -> jax.Array:
    """A dual variable from its raw parameter: ``exp`` of ``raw`` tanh-squashed into
    ``[DUAL_LOG_MIN, DUAL_LOG_MAX]`` (the code's parameterisation of optimism and KL weight)."""
    span = DUAL_LOG_MAX - DUAL_LOG_MIN
    return jnp.exp(DUAL_LOG_MIN + 0.5 * span * (1.0 + jnp.tanh(raw)))


def raw_of(value: float) -> jax.Array:
    """The raw parameter whose :func:`bounded_exp` is ``value``."""
    span = DUAL_LOG_MAX - DUAL_LOG_MIN
    return jnp.arctanh(jnp.float32((math.log(value) - DUAL_LOG_MIN) / (0.5 * span) - 1.0))


# --- losses: pure functions of the networks, the parameters and the batch ------------------------

QuantileFn = Callable[[jax.Array, jax.Array], jax.Array]  # (obs, action) -> [n, B, N]


def sample_action(actor: BroActor, actor_params, obs: jax.Array, key: jax.Array):
    """``a ~ pi(.|s)`` and ``log pi(a|s)``: obs ``[B, obs_dim]`` -> ``([B, A], [B])``."""
    mean, log_std = actor.apply(actor_params, obs)
    return squashed_gaussian_sample(mean, log_std, key)


def critic_regression_loss(
    quantiles: jax.Array, target: jax.Array, taus: jax.Array, kappa: float, quantile: bool
) -> jax.Array:
    """Step 1's loss, summed over critics. ``quantiles [n, B, N]``, ``target [B, N]``
    (gradient stopped): the quantile Huber loss of every critic's quantiles to the target
    quantiles, or for a scalar critic (``N = 1``) the squared error."""
    target = jax.lax.stop_gradient(target)
    if not quantile:
        return jnp.sum(jnp.mean((quantiles[..., 0] - target[..., 0]) ** 2, axis=-1))
    return jnp.sum(jnp.mean(quantile_huber_loss(quantiles, target, taus, kappa), axis=-1))


def critic_loss(
    actor: BroActor,
    critic: BroCriticEnsemble,
    config: BROConfig,
    taus: jax.Array,
    critic_params,
    state: BROState,
    batch: Batch,
    key: jax.Array,
):
    """Step 1: the target quantiles of the target critics at ``a' ~ pi(.|s')`` and the quantile
    Huber loss: ``(loss, metrics)``."""
    next_action, next_log_prob = sample_action(actor, state.actor_params, batch.next_obs, key)
    next_quantiles = critic.apply(state.target_critic_params, batch.next_obs, next_action)
    next_value = critic_bound(next_quantiles, -config.pessimism)
    temperature = jnp.exp(state.log_temperature)
    target = td_target(
        batch.reward[:, None],
        batch.terminated[:, None],
        next_value - temperature * next_log_prob[:, None],
        config.gamma,
    )
    quantiles = critic.apply(critic_params, batch.obs, batch.action)
    loss = critic_regression_loss(
        quantiles, target, taus, config.huber_kappa, config.quantile_critic
    )
    return loss, {"critic_loss": loss, "q_mean": quantiles.mean()}


def actor_loss(
    actor: BroActor,
    quantiles_of: QuantileFn,
    pessimism: float,
    actor_params,
    log_temperature: jax.Array,
    obs: jax.Array,
    key: jax.Array,
):
    """Step 3: ``mean(alpha log pi(a|s) - Q_lb(s, a))``: ``(loss, entropy estimate [B])``."""
    action, log_prob = sample_action(actor, actor_params, obs, key)
    q = critic_bound(quantiles_of(obs, action), -pessimism).mean(axis=-1)
    return jnp.mean(jnp.exp(log_temperature) * log_prob - q), -log_prob


def optimistic_actor_loss(
    actor: BroActor,
    shift: OptimisticShift,
    quantiles_of: QuantileFn,
    std_multiplier: float,
    shift_params,
    actor_params,
    optimism: jax.Array,
    kl_weight: jax.Array,
    obs: jax.Array,
    key: jax.Array,
):
    """Step 4: ``-mean(Q_ub(s, a_o)) + tau_KL mean(KL)``, ``a_o ~ pi_o`` reparameterised:
    ``(loss, KL [B])``."""
    mean_c, log_std_c = actor.apply(actor_params, obs)
    mean_o, log_std_o = optimistic_gaussian(
        shift, shift_params, obs, mean_c, log_std_c, std_multiplier
    )
    action, _ = squashed_gaussian_sample(mean_o, log_std_o, key)
    q_upper = critic_bound(quantiles_of(obs, action), optimism).mean(axis=-1)
    kl = gaussian_kl(mean_o, log_std_o - math.log(std_multiplier), mean_c, log_std_c)
    return -jnp.mean(q_upper) + kl_weight * jnp.mean(kl), kl


def optimism_loss(raw_optimism: jax.Array, kl_per_dim: jax.Array, config: BROConfig):
    """Step 6: ``(beta_o - beta_lb)(KL / |A| - target)``, the KL's gradient stopped."""
    violation = jax.lax.stop_gradient(kl_per_dim - config.kl_target)
    return (bounded_exp(raw_optimism) - config.pessimism) * violation


def kl_weight_loss(raw_kl_weight: jax.Array, kl_per_dim: jax.Array, config: BROConfig):
    """Step 6: ``-tau_KL (KL / |A| - target)``, the KL's gradient stopped."""
    return -bounded_exp(raw_kl_weight) * jax.lax.stop_gradient(kl_per_dim - config.kl_target)


def dual_step(loss_fn, raw: jax.Array, opt_state, optimizer, kl_per_dim, config: BROConfig):
    """One Adam step of a dual variable's raw parameter on ``loss_fn``."""
    grad = jax.grad(loss_fn)(raw, kl_per_dim, config)
    return apply_gradients(optimizer, raw, opt_state, grad)


def make(config: BROConfig, spec: EnvSpec) -> Agent:
    """Build BRO's pure ``init`` / ``act`` / ``update`` for one env."""
    unknown = sorted(set(config.reset_networks) - set(RESET_PARTS))
    if unknown:
        raise UsageError(
            f"unknown reset_networks entry {unknown[0]!r}; "
            f"expected some of {', '.join(RESET_PARTS)}"
        )
    actor = BroActor(config.actor_hidden_dims, spec.action_dim)
    shift = OptimisticShift(config.actor_hidden_dims, spec.action_dim)
    critic = config.critic()
    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()
    temperature_optimizer = config.temperature_optimizer()
    dual_optimizer = config.dual_optimizer()
    target_entropy = config.target_entropy_value(spec.action_dim)
    taus = quantile_midpoints(config.num_quantiles)
    reset_at = jnp.asarray(config.reset_at_updates, jnp.int32)
    reset_fields = [name for part in config.reset_networks for name in RESET_PARTS[part]]

    def fresh_state(key: jax.Array) -> BROState:
        """Every network, dual variable and optimiser state as at initialisation, drawn with
        ``key``; the reset key is ``key`` and the step 0."""
        actor_key, shift_key, critic_key = jax.random.split(key, 3)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, spec.action_dim), jnp.float32)
        actor_params = actor.init(actor_key, obs)
        shift_params = shift.init(shift_key, obs, action)
        critic_params = critic.init(critic_key, obs, action)
        log_temperature = config.initial_log_temperature()
        raw_optimism = raw_of(config.init_optimism)
        raw_kl_weight = raw_of(config.init_kl_weight)
        return BROState(
            actor_params=actor_params,
            optimistic_actor_params=shift_params,
            critic_params=critic_params,
            target_critic_params=critic_params,
            log_temperature=log_temperature,
            raw_optimism=raw_optimism,
            raw_kl_weight=raw_kl_weight,
            actor_opt_state=actor_optimizer.init(actor_params),
            optimistic_actor_opt_state=actor_optimizer.init(shift_params),
            critic_opt_state=critic_optimizer.init(critic_params),
            temperature_opt_state=temperature_optimizer.init(log_temperature),
            optimism_opt_state=dual_optimizer.init(raw_optimism),
            kl_weight_opt_state=dual_optimizer.init(raw_kl_weight),
            reset_key=key,
            step=jnp.zeros((), jnp.int32),
        )

    def reset(state: BROState) -> BROState:
        """``state`` with the ``reset_networks`` re-drawn: from a new key (``fresh``) or from the
        initial one (``initial``); everything else kept."""
        if config.reset_draw == "fresh":
            reset_key, draw_key = jax.random.split(state.reset_key)
        else:
            reset_key = draw_key = state.reset_key
        drawn = fresh_state(draw_key)
        return state.replace(
            **{name: getattr(drawn, name) for name in reset_fields}, reset_key=reset_key
        )

    critic_loss_fn = functools.partial(critic_loss, actor, critic, config, taus)

    def gradient_step(state: BROState, batch: Batch, key: jax.Array) -> tuple[BROState, Metrics]:
        if config.resets:
            state = jax.lax.cond(jnp.any(state.step == reset_at), reset, lambda s: s, state)
        critic_key, actor_key, optimistic_key = jax.random.split(key, 3)

        critic_grads, critic_metrics = jax.grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, critic_key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )
        target_critic_params = polyak_update(state.target_critic_params, critic_params, config.tau)
        quantiles_of = functools.partial(critic.apply, critic_params)

        (loss, entropy), actor_grads = jax.value_and_grad(actor_loss, argnums=3, has_aux=True)(
            actor,
            quantiles_of,
            config.pessimism,
            state.actor_params,
            state.log_temperature,
            batch.obs,
            actor_key,
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )

        optimism = bounded_exp(state.raw_optimism)
        kl_weight = bounded_exp(state.raw_kl_weight)
        (optimistic_loss, kl), shift_grads = jax.value_and_grad(
            optimistic_actor_loss, argnums=4, has_aux=True
        )(
            actor,
            shift,
            quantiles_of,
            config.std_multiplier,
            state.optimistic_actor_params,
            actor_params,
            optimism,
            kl_weight,
            batch.obs,
            optimistic_key,
        )
        shift_params, shift_opt_state = apply_gradients(
            actor_optimizer,
            state.optimistic_actor_params,
            state.optimistic_actor_opt_state,
            shift_grads,
        )

        log_temperature, temperature_opt_state = temperature_step(
            state.log_temperature,
            state.temperature_opt_state,
            temperature_optimizer,
            entropy,
            target_entropy,
            config.learns_temperature,
        )
        kl_per_dim = jnp.mean(kl) / spec.action_dim
        raw_optimism, optimism_opt_state = dual_step(
            optimism_loss,
            state.raw_optimism,
            state.optimism_opt_state,
            dual_optimizer,
            kl_per_dim,
            config,
        )
        raw_kl_weight, kl_weight_opt_state = dual_step(
            kl_weight_loss,
            state.raw_kl_weight,
            state.kl_weight_opt_state,
            dual_optimizer,
            kl_per_dim,
            config,
        )
        new_state = state.replace(
            actor_params=actor_params,
            optimistic_actor_params=shift_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            log_temperature=log_temperature,
            raw_optimism=raw_optimism,
            raw_kl_weight=raw_kl_weight,
            actor_opt_state=actor_opt_state,
            optimistic_actor_opt_state=shift_opt_state,
            critic_opt_state=critic_opt_state,
            temperature_opt_state=temperature_opt_state,
            optimism_opt_state=optimism_opt_state,
            kl_weight_opt_state=kl_weight_opt_state,
            step=state.step + 1,
        )
        metrics = {
            **critic_metrics,
            "actor_loss": loss,
            "entropy": entropy.mean(),
            "temperature": jnp.exp(log_temperature),
            "optimistic_actor_loss": optimistic_loss,
            "kl_per_dim": kl_per_dim,
            "optimism": optimism,
            "kl_weight": kl_weight,
        }
        return new_state, metrics

    def init(key: jax.Array) -> BROState:
        return fresh_state(key)

    def exploration_action(state: BROState, obs: jax.Array, key: jax.Array) -> jax.Array:
        """``a ~ pi_o(.|s)``, the optimistic policy."""
        mean_c, log_std_c = actor.apply(state.actor_params, obs)
        mean_o, log_std_o = optimistic_gaussian(
            shift, state.optimistic_actor_params, obs, mean_c, log_std_c, config.std_multiplier
        )
        return squashed_gaussian_sample(mean_o, log_std_o, key)[0]

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: BROState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic:
            return jnp.tanh(actor.apply(state.actor_params, obs)[0])
        return exploration_action(state, obs, key)

    @jax.jit
    def update(state: BROState, batch: Batch, key: jax.Array) -> tuple[BROState, Metrics]:
        return scan_updates(gradient_step, state, batch, key)

    def critic_step(state: BROState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def reset_step(state: BROState, batch: Batch, key: jax.Array) -> BROState:
        """:func:`reset` with the phases' signature (a reset reads neither batch nor key)."""
        return reset(state)

    phases = {"critic step": jax.jit(critic_step), "reset": jax.jit(reset_step)}
    return Agent(init=init, act=act, update=update, phases=phases)


PAPER_VALUES = {
    "batch_size": 128,
    "learning_starts": PAPER_LEARNING_STARTS,
    "updates_per_step": 10,
    "eval_episodes": 5,
}
CPU_VALUES = {
    "actor_hidden_dims": (64, 64),
    "critic_hidden_dims": (128, 128),
    "num_quantiles": 25,
    "batch_size": 128,
    "learning_starts": 1_000,
    "updates_per_step": 2,
    "eval_every": 1_000,
}

PRESETS = {
    "paper": Preset(
        PAPER_VALUES,
        "BRO (Nauman et al. 2024) with the official code's hidden settings: replay ratio 10, "
        "batch 128, 2,500 random steps, resets at env steps 15k, 50k, 250k, 500k, ... .",
        suite="dmc",
    ),
    "paper-fast": Preset(
        {
            **PAPER_VALUES,
            "updates_per_step": 2,
            "reset_at_updates": reset_points(FAST_RESET_ENV_STEPS, PAPER_LEARNING_STARTS, 2),
        },
        "BRO (Fast): `paper` at replay ratio 2 with its one reset at env step 15k.",
        suite="dmc",
    ),
    "cpu": Preset(
        {
            **CPU_VALUES,
            "reset_at_updates": reset_points(FAST_RESET_ENV_STEPS, 1_000, 2),
        },
        "BRO (Fast) on small BroNets (critic 128 wide with 1 block, actor 64 with 1 block), 25 "
        "quantiles, 1,000 random steps; its one reset at env step 15k.",
    ),
}
