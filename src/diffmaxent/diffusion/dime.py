"""DIME's diffusion sampler and its entropy lower bound (Celik et al., "DIME: Diffusion-Based
Maximum Entropy Reinforcement Learning", ICML 2025, arXiv:2502.02316).

The policy is a controlled Ornstein-Uhlenbeck diffusion, discretised with Euler-Maruyama, from a
fixed Gaussian prior ``x_0 ~ N(0, prior_std^2 I)`` (``prior_std`` = 2.5) to the pre-squash action
``x_N``; the action is ``tanh(x_N)``. With step sizes ``eta_k`` (``k = 0 .. N-1``):

* policy ("backward", generative) kernel, with the control network ``f_theta``:
  ``x_{k+1} = x_k + eta_k (-x_k / prior_std^2 + f_theta(x_k, s, k)) + sqrt(2 eta_k) eps_k``;
* reference ("forward", noising) kernel, an OU step towards the prior with no network:
  ``x_k | x_{k+1} ~ N(x_{k+1} - eta_k x_{k+1} / prior_std^2, 2 eta_k I)``.

Step sizes: ``eta_k = softplus(theta_dt) c(k) / softplus(theta_friction)``, one learned scalar
``theta_dt`` (initial ``dt`` 0.1) on a fixed cosine shape ``c(k)`` (:func:`cosine_dt_shape`) and a
learned friction per action dimension (initial 1.0). The learned step sizes scale both kernels.

Entropy lower bound from one chain (the path-space bound of the paper): for ``a = tanh(x_N)``,

    H[pi(.|s)] >= E[ sum_k log ref(x_k | x_{k+1}) - sum_k log pi(x_{k+1} | x_k)
                     - log p_prior(x_0) + sum_d log(1 - tanh(x_N,d)^2) ],

because ``H[x_N] = E[-log pi(x_{0:N})] + E[log pi(x_{0:N-1} | x_N)]`` and replacing the policy's
posterior over the path by the reference kernels can only lower the second term (by the expected
KL between the two). It is tight exactly when the policy kernels are the time reversal of the
reference process. Following the official code's names, one sample gives

* ``running_cost = -(sum_k log-ratio_k + tanh log-det)`` (depends on the parameters),
* ``terminal_cost = log p_prior(x_0)`` (a constant: the prior is fixed and ``x_0`` is not
  differentiated),

and ``running_cost + terminal_cost`` is an upper-bound estimate of ``log pi(a|s)``; it plays the
role of SAC's log-probability, and ``entropy_bound = -(running_cost + terminal_cost)``. The
sampler returns these terms, so agents never recompute them, and the whole chain is
differentiable (reparameterised) for the actor loss.

Every detail here follows the official code (ALRhub/DIME); where the code has hidden choices they
are exposed as options:

* the control network is the code's (time features ``sin/cos(w k + phase)`` of the raw step
  index ``k`` with 256 frequencies ``w`` in [0.1, 100] and a learned phase, a 2-layer GELU time
  encoder, then 3 x 256 GELU layers on ``[x, s, time]``), with its last layer initialised near
  zero so that the initial policy is the squashed reference chain; the output is clipped to
  ``+-1e4`` as in the code;
* ``learn_dt`` / ``learn_friction`` (both on, as in the code) freeze the step sizes when off;
* ``zero_noise=True`` runs the chain from ``x_0 = 0`` without noise: a deterministic action for
  evaluation. The official code ignores ``deterministic`` and always samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmaxent.distributions import gaussian_log_prob, tanh_log_det
from diffmaxent.nn import MLP

PRIOR_STD = 2.5
DEFAULT_NUM_STEPS = 16
INIT_DT = 0.1
INIT_FRICTION = 1.0
COSINE_MIN = 1e-3
COSINE_S = 0.008

ControlFn = Callable[[jax.Array, Any], jax.Array]


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (for ``y > 0``)."""
    return y + math.log(-math.expm1(-y))


def cosine_dt_shape(
    num_steps: int, min_value: float = COSINE_MIN, s: float = COSINE_S
) -> jax.Array:
    """The fixed shape ``c(k)`` of the step sizes, ``[num_steps]``, in sampling order.

    ``c(k) = (1 - min) cos^2(pi/2 (1 + s - t) / (1 + s)) + min`` with ``t = (N - k) / N``: about
    1 at the first (noise-end) step, falling to about ``0.01`` at the last for ``N = 16``, so the
    chain takes its finest steps next to the action (the official code's cosine schedule)."""
    k = jnp.arange(num_steps, dtype=jnp.float32)
    t = (num_steps - k) / num_steps
    return (1.0 - min_value) * jnp.cos(0.5 * jnp.pi * (1.0 + s - t) / (1.0 + s)) ** 2 + min_value


class DIMESample(NamedTuple):
    """One sampled chain per leading index (``[...]`` is the batch shape of ``obs``)."""

    action: jax.Array  # [..., A], tanh(x_N), in (-1, 1)
    pre_tanh: jax.Array  # [..., A], x_N
    running_cost: jax.Array  # [...], -(sum of log-ratios + tanh log-det)
    terminal_cost: jax.Array  # [...], log p_prior(x_0)
    log_ratios: jax.Array  # [N, ...], log ref(x_k | x_{k+1}) - log pi(x_{k+1} | x_k)
    tanh_log_det: jax.Array  # [...], sum_d log(1 - tanh(x_N,d)^2)

    @property
    def cost(self) -> jax.Array:
        """``running_cost + terminal_cost``: the estimate of ``log pi(a|s)`` (an upper bound in
        expectation), ``[...]``."""
        return self.running_cost + self.terminal_cost

    @property
    def entropy_bound(self) -> jax.Array:
        """``-cost``: one-sample estimate of the entropy lower bound, ``[...]``."""
        return -self.cost


def dime_chain(
    control_fn: ControlFn,
    step_inputs: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    eta: jax.Array,
    *,
    prior_std: float = PRIOR_STD,
    reference_std: float | None = None,
    zero_noise: bool = False,
) -> DIMESample:
    """Run the Euler-Maruyama chain and accumulate the entropy bound's terms.

    Args:
        control_fn: ``f(x [*shape], step_input) -> [*shape]``, the learned control.
        step_inputs: a pytree with leading axis ``N``; step ``k`` receives its ``k``-th slice
            (e.g. the time conditioning of step ``k``, or per-step parameters in tests).
        key: PRNG key for the prior sample and the ``N`` noise draws.
        shape: ``(*batch, A)``.
        eta: step sizes ``[N]``, ``[N, A]`` or ``[N, *shape]``.
        prior_std: std of the fixed prior of ``x_0`` (and of the terminal cost).
        reference_std: the std whose OU drift ``-x / reference_std^2`` both kernels use; defaults
            to ``prior_std`` (DIME). Tests set it apart to build a chain whose reversal is known.
        zero_noise: start at ``x_0 = 0`` and add no noise (a deterministic action; the returned
            costs then describe no sample and are meaningless).

    Returns:
        A :class:`DIMESample`.
    """
    reference_std = prior_std if reference_std is None else reference_std
    num_steps = eta.shape[0]
    eta = jnp.asarray(eta, jnp.float32)
    if eta.ndim == 1:
        eta = eta[:, None]
    eta = eta.reshape((num_steps,) + (1,) * (len(shape) + 1 - eta.ndim) + eta.shape[1:])
    prior_key, noise_key = jax.random.split(key)
    if zero_noise:
        x0 = jnp.zeros(shape, jnp.float32)
        noise = jnp.zeros((num_steps, *shape), jnp.float32)
    else:
        # The prior is fixed, so its sample carries no gradient (the official learn_prior=False).
        x0 = jax.lax.stop_gradient(prior_std * jax.random.normal(prior_key, shape))
        noise = jax.random.normal(noise_key, (num_steps, *shape))
    pull = 1.0 / reference_std**2

    def step(x, inputs):
        step_input, eta_k, eps_k = inputs
        log_std = 0.5 * jnp.log(2.0 * eta_k)
        policy_mean = x + eta_k * (-pull * x + control_fn(x, step_input))
        x_next = policy_mean + jnp.exp(log_std) * eps_k
        reference_mean = x_next - eta_k * pull * x_next
        log_ratio = gaussian_log_prob(x, reference_mean, log_std) - gaussian_log_prob(
            x_next, policy_mean, log_std
        )
        return x_next, log_ratio

    x_final, log_ratios = jax.lax.scan(step, x0, (step_inputs, eta, noise))
    log_det = tanh_log_det(x_final)
    running_cost = -(jnp.sum(log_ratios, axis=0) + log_det)
    terminal_cost = gaussian_log_prob(x0, jnp.zeros_like(x0), jnp.log(prior_std))
    return DIMESample(
        action=jnp.tanh(x_final),
        pre_tanh=x_final,
        running_cost=running_cost,
        terminal_cost=terminal_cost,
        log_ratios=log_ratios,
        tanh_log_det=log_det,
    )


class ControlNet(nn.Module):
    """The control ``f_theta(x_k, s, k)`` (the official "PISGRAD" conditional network).

    * time: ``[sin(w k + phase), cos(w k + phase)]`` for ``num_frequencies`` fixed ``w`` evenly
      spaced on ``[0.1, max_frequency]`` with a learned ``phase``, then Dense ``time_dim`` -> GELU
      -> Dense ``time_dim``;
    * main: ``hidden_dims`` GELU layers on ``[x, s, time]``, then a Dense to ``A`` whose weights
      start near zero (``output_scale``), clipped to ``+-output_clip``.

    The first layer is written ``W_x x + W_s s + W_t time``, the same function as a Dense layer on
    the concatenation: :meth:`condition` computes the state term once per state and the time term
    once per step, so a chain of ``N`` steps pays for them once, not ``N`` times.

    Shapes: ``obs [..., obs_dim]``, ``x [..., A]``, ``step`` an integer array broadcastable to
    the leading shape (or ``[N]`` in :meth:`condition`).
    """

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256, 256)
    time_dim: int = 256
    num_frequencies: int = 256
    max_frequency: float = 100.0
    output_scale: float = 1e-8
    output_clip: float = 1e4

    def setup(self) -> None:
        width = self.hidden_dims[0]
        self.phase = self.param("phase", nn.initializers.zeros, (self.num_frequencies,))
        self.time_encoder = MLP((self.time_dim,), self.time_dim, activation="gelu")
        self.input_action = nn.Dense(width)
        self.input_obs = nn.Dense(width, use_bias=False)
        self.input_time = nn.Dense(width, use_bias=False)
        self.trunk = MLP(
            tuple(self.hidden_dims[1:]),
            self.action_dim,
            activation="gelu",
            output_scale=self.output_scale,
        )

    def time_features(self, step: jax.Array) -> jax.Array:
        """``step [...]`` (raw index, as the official code) -> ``[..., 2 * num_frequencies]``."""
        frequencies = jnp.linspace(0.1, self.max_frequency, self.num_frequencies)
        angle = jnp.asarray(step, jnp.float32)[..., None] * frequencies + self.phase
        return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)

    def condition(self, obs: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The first layer's state term ``[..., width]`` and time term ``[*step.shape, width]``."""
        time = self.time_encoder(self.time_features(step))
        return self.input_obs(obs), self.input_time(time)

    def control(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        """``x [..., A]`` and the summed state + time terms ``[..., width]`` -> ``[..., A]``."""
        hidden = nn.gelu(self.input_action(x) + condition)
        return jnp.clip(self.trunk(hidden), -self.output_clip, self.output_clip)

    def __call__(self, obs: jax.Array, x: jax.Array, step: jax.Array) -> jax.Array:
        obs_term, time_term = self.condition(obs, step)
        return self.control(x, obs_term + time_term)


@dataclasses.dataclass(frozen=True)
class DIMEPolicy:
    """The DIME policy: control network, learned step sizes, and the sampler.

    Parameters are a dict ``{"control": network params, "dt": [], "friction": [A]}``; ``dt`` and
    ``friction`` are stored before ``softplus``. It holds no optimiser and knows no critic.
    """

    action_dim: int
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    num_steps: int = DEFAULT_NUM_STEPS
    prior_std: float = PRIOR_STD
    init_dt: float = INIT_DT
    init_friction: float = INIT_FRICTION
    learn_dt: bool = True
    learn_friction: bool = True
    time_dim: int = 256
    num_frequencies: int = 256

    @property
    def network(self) -> ControlNet:
        return ControlNet(
            self.action_dim,
            tuple(self.hidden_dims),
            time_dim=self.time_dim,
            num_frequencies=self.num_frequencies,
        )

    def init(self, key: jax.Array, obs_dim: int) -> dict:
        obs = jnp.zeros((1, obs_dim), jnp.float32)
        x = jnp.zeros((1, self.action_dim), jnp.float32)
        return {
            "control": self.network.init(key, obs, x, jnp.zeros((1,), jnp.int32)),
            "dt": jnp.asarray(inverse_softplus(self.init_dt), jnp.float32),
            "friction": jnp.full(
                (self.action_dim,), inverse_softplus(self.init_friction), jnp.float32
            ),
        }

    def step_sizes(self, params: dict) -> jax.Array:
        """``eta_k = softplus(dt) c(k) / softplus(friction)``, ``[N, A]``."""
        dt = jax.nn.softplus(params["dt"])
        friction = jax.nn.softplus(params["friction"])
        if not self.learn_dt:
            dt = jax.lax.stop_gradient(dt)
        if not self.learn_friction:
            friction = jax.lax.stop_gradient(friction)
        return (dt * cosine_dt_shape(self.num_steps))[:, None] / friction

    def sample(
        self, params: dict, obs: jax.Array, key: jax.Array, zero_noise: bool = False
    ) -> DIMESample:
        """One chain per observation: ``obs [..., obs_dim]`` -> :class:`DIMESample` with
        ``action [..., A]``. Differentiable in ``params`` through every step."""
        network = self.network
        control_params = params["control"]
        obs_term, time_terms = network.apply(
            control_params, obs, jnp.arange(self.num_steps), method=ControlNet.condition
        )

        def control_fn(x, time_term):
            return network.apply(control_params, x, obs_term + time_term, method=ControlNet.control)

        return dime_chain(
            control_fn,
            time_terms,
            key,
            (*obs.shape[:-1], self.action_dim),
            self.step_sizes(params),
            prior_std=self.prior_std,
            zero_noise=zero_noise,
        )
