"""The diffusion-augmented MDP of DMERL (Sanokowski, Patil, Knoll, "A Diffusion Model Framework
for Maximum Entropy Reinforcement Learning", arXiv:2512.02019), computed in-graph.

**The MDP.** Each env step ``t`` is expanded into ``K`` denoising steps. With the augmented
state ``(s_t, x_k, k)``, ``k = 0 .. K-1``, the augmented action is the next latent
``x_{k+1} ~ p_gen(. | x_k, s_t, k)``, and

* for ``k < K-1``: the next augmented state is ``(s_t, x_{k+1}, k+1)``, the reward is 0, the env
  is not touched and no episode ends;
* for ``k = K-1`` (the K-th transition, "k = K" when transitions are counted from 1): the env
  executes ``a_t = tanh(x_K)``, the reward is the env's ``r(s_t, a_t)``, the episode may end,
  and the next augmented state is ``(s_{t+1}, x_0', 0)`` with a fresh prior latent
  ``x_0' ~ N(0, prior_std^2 I)``.

An episode of ``T`` env steps is ``K T`` augmented steps. The intermediate steps never go
through an env process or a Python loop: :meth:`DenoisingPolicy.denoise` runs the ``K`` kernels
of a batch of envs in one ``lax.scan`` inside a jitted function, and :func:`expand` turns a
rollout of env steps and their chains into augmented transitions, again in-graph.
:class:`diffmaxent.envs.augmented.AugmentedMDPEnv` is the same MDP as a plain Gymnasium
wrapper, for reading and for tests (the two give identical transitions for the same keys).

**Kernels.** The DIME sampler's (:mod:`diffmaxent.diffusion.dime`; DMERL's official code also
uses this "dis" sampler), one step at a time, with fixed step sizes ``eta_k``:

* generative: ``p_gen(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / prior_std^2 + f_theta(x_k, s,
  k)), 2 eta_k I)``;
* reference ("destination", backward): ``p_ref(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} /
  prior_std^2, 2 eta_k I)``, an Ornstein-Uhlenbeck step with no parameters.

``dime_chain`` has the same kernels but only exposes whole chains; here each step is a function
of its own, because the augmented MDP needs per-step log-densities under new parameters.

**Bound.** By the data-processing inequality, the reverse KL between the policy's action
marginal and the target is at most the KL between the joint chain measures
``q = p_prior(x_0) prod_k p_gen(x_{k+1} | x_k)`` and ``p = pi*(x_K) prod_k p_ref(x_k | x_{k+1})``
(equal when ``p_ref`` is the exact reversal of ``q``). The joint KL splits into one term per
denoising step, ``l_k = log p_gen(x_{k+1} | x_k) - log p_ref(x_k | x_{k+1})``, so the per-step
soft reward of the augmented MDP is ``r 1[k = K-1] - alpha l_k`` (:func:`soft_rewards`) and
``-sum_k l_k`` is the (prior-relative) entropy estimate of one chain (:func:`entropy_estimate`,
``-K mean(l)`` over a batch as in the official code). All agents take these three quantities
from here.

**Paper vs official code.** The bound puts ``-alpha l_k`` on step ``k`` itself
(``mode="paper"``, default), and so does the released DA-MDP PPO trainer at its default fixed
temperature; the code's helper functions (``learning_DA_MDP_PPO``) give step ``k`` the *next*
step's term, ``r - gamma alpha l_{k+1}``, and add ``-alpha (l_k - mean l)`` to the advantage
(``mode="official"``). The official code learns the step sizes per step; here they are fixed (a
linear or cosine shape times ``step_size``), which keeps ``p_ref`` free of parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.diffusion.dime import ControlNet, cosine_dt_shape
from diffmaxent.distributions import gaussian_log_prob
from diffmaxent.nn import MLP

PRIOR_STD = 2.5  # the official DA-MDP PPO default (3.0 for WPO / REPPO)
SCHEDULES = ("linear", "cosine")
SOFT_REWARD_MODES = ("paper", "official")
CONTROLS = ("drift", "noise")

# (x [..., A], k) -> (mean [..., A], std broadcastable to [..., A])
KernelFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def step_size_schedule(
    num_steps: int, step_size: float, min_fraction: float, schedule: str = "linear"
) -> np.ndarray:
    """Step sizes ``eta_k``, ``[K]`` float32, in sampling order (largest at the noise end).

    ``linear``: ``step_size * c(k)`` with ``c`` falling linearly from 1 to ``min_fraction``
    (the official code's default shape); ``cosine``: DIME's cosine shape with minimum
    ``min_fraction``."""
    if schedule == "linear":
        shape = np.linspace(1.0, min_fraction, num_steps) if num_steps > 1 else np.ones(1)
    elif schedule == "cosine":
        shape = np.asarray(cosine_dt_shape(num_steps, min_fraction))
    else:
        raise ValueError(f"unknown step-size schedule {schedule!r}; accepted: {SCHEDULES}")
    return (step_size * shape).astype(np.float32)


def generative_kernel(
    x: jax.Array, control: jax.Array, eta: jax.Array, prior_std: float
) -> tuple[jax.Array, jax.Array]:
    """Mean ``[..., A]`` and std of ``p_gen(x_{k+1} | x_k)``: an Euler-Maruyama step of the
    controlled OU process ``dx = (-x / prior_std^2 + f) dt + sqrt(2) dW``."""
    return x + eta * (-x / prior_std**2 + control), jnp.sqrt(2.0 * eta)


def reference_kernel(
    x_next: jax.Array, eta: jax.Array, prior_std: float
) -> tuple[jax.Array, jax.Array]:
    """Mean ``[..., A]`` and std of ``p_ref(x_k | x_{k+1})``: the uncontrolled OU step taken from
    ``x_{k+1}``, the reversal of the zero-control chain when started at its stationary law."""
    return x_next - eta * x_next / prior_std**2, jnp.sqrt(2.0 * eta)


def log_std_of(std: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.log(std), like.shape)


class Chain(NamedTuple):
    """The ``K`` augmented transitions of one env step, for every leading index ``[...]``."""

    latents: jax.Array  # [K + 1, ..., A]: x_0 (prior) .. x_K (pre-tanh action)
    log_p_gen: jax.Array  # [K, ...]: log p_gen(x_{k+1} | x_k, s, k)
    log_p_ref: jax.Array  # [K, ...]: log p_ref(x_k | x_{k+1}, k)

    @property
    def action(self) -> jax.Array:
        """The env action ``tanh(x_K)``, ``[..., A]``."""
        return jnp.tanh(self.latents[-1])

    @property
    def log_ratio(self) -> jax.Array:
        """``l_k = log p_gen - log p_ref``, ``[K, ...]``."""
        return self.log_p_gen - self.log_p_ref


def run_chain(generative: KernelFn, reference: KernelFn, x0: jax.Array, noise: jax.Array) -> Chain:
    """Sample ``x_{k+1} = mean_k(x_k) + std_k * noise_k`` for ``k = 0 .. K-1`` with one
    ``lax.scan`` and score every transition under both kernels.

    Args:
        generative, reference: ``kernel(x, k) -> (mean, std)``; ``reference`` receives
            ``x_{k+1}`` and describes ``x_k``.
        x0: ``[..., A]`` first latent.
        noise: ``[K, ..., A]`` standard normal draws (zeros give the noise-free chain).
    """

    def step(x, inputs):
        k, eps = inputs
        mean, std = generative(x, k)
        x_next = mean + std * eps
        ref_mean, ref_std = reference(x_next, k)
        log_p_gen = gaussian_log_prob(x_next, mean, log_std_of(std, x_next))
        log_p_ref = gaussian_log_prob(x, ref_mean, log_std_of(ref_std, x))
        return x_next, (x_next, log_p_gen, log_p_ref)

    steps = jnp.arange(noise.shape[0])
    _, (xs, log_p_gen, log_p_ref) = jax.lax.scan(step, x0, (steps, noise))
    return Chain(jnp.concatenate([x0[None], xs]), log_p_gen, log_p_ref)


def split_step_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The prior key and the kernels' noise key of one env step: every sampler of the
    augmented MDP (in-graph or the wrapper) derives its draws this way."""
    prior_key, noise_key = jax.random.split(key)
    return prior_key, noise_key


def prior_sample(key: jax.Array, shape: Sequence[int], prior_std: float) -> jax.Array:
    """``x_0 ~ N(0, prior_std^2 I)`` from an env step's key (its prior half)."""
    return prior_std * jax.random.normal(split_step_key(key)[0], tuple(shape))


def kernel_noise(key: jax.Array, num_steps: int, shape: Sequence[int]) -> jax.Array:
    """The ``[K, *shape]`` standard normal draws of an env step's kernels (its noise half)."""
    return jax.random.normal(split_step_key(key)[1], (num_steps, *shape))


@dataclasses.dataclass(frozen=True)
class DenoisingPolicy:
    """The K-step Gaussian denoising policy of the augmented MDP (no optimiser, no critic).

    ``f_theta`` is DIME's :class:`ControlNet` (time features of ``k``, state term computed once
    per state); parameters are its flax params. Shapes: ``obs [..., obs_dim]``, latents
    ``[..., A]``, step indices ``k`` integer ``[...]``.
    """

    action_dim: int
    num_steps: int = 8
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    prior_std: float = PRIOR_STD
    step_size: float = 0.125
    min_step_fraction: float = 0.05
    schedule: str = "linear"
    time_dim: int = 16
    num_frequencies: int = 16
    output_scale: float = 1e-2
    control: str = "drift"

    @property
    def network(self) -> ControlNet:
        return ControlNet(
            self.action_dim,
            tuple(self.hidden_dims),
            time_dim=self.time_dim,
            num_frequencies=self.num_frequencies,
            max_frequency=3.0,  # below pi: distinct features for every integer k
            output_scale=self.output_scale,
        )

    @property
    def step_sizes(self) -> np.ndarray:
        """``eta_k``, ``[K]``."""
        return step_size_schedule(
            self.num_steps, self.step_size, self.min_step_fraction, self.schedule
        )

    def init(self, key: jax.Array, obs_dim: int) -> dict:
        obs = jnp.zeros((1, obs_dim), jnp.float32)
        x = jnp.zeros((1, self.action_dim), jnp.float32)
        return self.network.init(key, obs, x, jnp.zeros((1,), jnp.int32))

    def _eta(self, k: jax.Array) -> jax.Array:
        return jnp.asarray(self.step_sizes)[k][..., None]

    def control_scales(self) -> np.ndarray:
        """What multiplies the network output to give ``f``, ``[K]``: 1 for ``drift`` (DIME and
        the official code), ``sqrt(2 / eta_k)`` for ``noise``, where the network's output is the
        mean's move in units of the step's noise std. Both span the same Gaussian kernels; with
        ``noise`` a unit output moves the mean as far at the last (finest) step as at the first,
        instead of ``eta_K / eta_0`` (1/20 for the linear default) as far."""
        if self.control == "drift":
            return np.ones(self.num_steps, np.float32)
        if self.control == "noise":
            return np.sqrt(2.0 / self.step_sizes).astype(np.float32)
        raise ValueError(f"unknown control {self.control!r}; accepted: {CONTROLS}")

    def kernel(
        self, params: dict, obs: jax.Array, x: jax.Array, k: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Mean ``[..., A]`` and std ``[..., 1]`` of ``p_gen(. | x_k = x, s = obs, k)``."""
        control = (
            self.network.apply(params, obs, x, k) * jnp.asarray(self.control_scales())[k][..., None]
        )
        return generative_kernel(x, control, self._eta(k), self.prior_std)

    def log_densities(
        self, params: dict, obs: jax.Array, x: jax.Array, k: jax.Array, x_next: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(log p_gen(x_next | x, obs, k), log p_ref(x | x_next, k))``, each ``[...]``: one
        network evaluation per augmented transition (what PPO's ratio needs)."""
        mean, std = self.kernel(params, obs, x, k)
        ref_mean, ref_std = reference_kernel(x_next, self._eta(k), self.prior_std)
        return (
            gaussian_log_prob(x_next, mean, log_std_of(std, x_next)),
            gaussian_log_prob(x, ref_mean, log_std_of(ref_std, x)),
        )

    def denoise(
        self, params: dict, obs: jax.Array, key: jax.Array, zero_noise: bool = False
    ) -> Chain:
        """All ``K`` transitions of one env step for ``obs [..., obs_dim]``, in one scan.

        ``key`` is the env step's key (:func:`split_step_key`). ``zero_noise`` starts at the
        prior's mean ``x_0 = 0`` and follows the kernels' means: a deterministic action, not the
        policy's mode (its log-densities describe no sample)."""
        shape = (*obs.shape[:-1], self.action_dim)
        if zero_noise:
            x0 = jnp.zeros(shape, jnp.float32)
            noise = jnp.zeros((self.num_steps, *shape), jnp.float32)
        else:
            x0 = prior_sample(key, shape, self.prior_std)
            noise = kernel_noise(key, self.num_steps, shape)
        network = self.network
        # State term once per state, time term once per step (not K times per transition).
        obs_term, time_terms = network.apply(
            params, obs, jnp.arange(self.num_steps), method=ControlNet.condition
        )
        eta = jnp.asarray(self.step_sizes)
        scale = jnp.asarray(self.control_scales())

        def generative(x, k):
            control = network.apply(params, x, obs_term + time_terms[k], method=ControlNet.control)
            return generative_kernel(x, scale[k] * control, eta[k], self.prior_std)

        def reference(x_next, k):
            return reference_kernel(x_next, eta[k], self.prior_std)

        return run_chain(generative, reference, x0, noise)


# --- augmented transitions, soft reward, entropy -------------------------------------------------


class AugmentedTransitions(NamedTuple):
    """Augmented transitions in time order, leading shape ``[N, B]`` with ``N = T K``: index
    ``t K + k`` is denoising step ``k`` of env step ``t``."""

    obs: jax.Array  # [N, B, obs_dim]  s_t
    latent: jax.Array  # [N, B, A]       x_k
    step: jax.Array  # [N, B] int32     k
    next_latent: jax.Array  # [N, B, A]  x_{k+1} (the augmented action)
    reward: jax.Array  # [N, B]  env reward at k = K-1, else 0
    is_last: jax.Array  # [N, B]  1 at k = K-1 (the env transition), else 0
    terminated: jax.Array  # [N, B]  env termination, only ever at k = K-1
    truncated: jax.Array  # [N, B]  env truncation, only ever at k = K-1
    log_p_gen: jax.Array  # [N, B]
    log_p_ref: jax.Array  # [N, B]


def expand(
    obs: jax.Array,
    latents: jax.Array,
    log_p_gen: jax.Array,
    log_p_ref: jax.Array,
    reward: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
) -> AugmentedTransitions:
    """Turn ``T`` env steps of ``B`` envs and their chains into ``T K`` augmented steps.

    Args:
        obs: ``[T, B, obs_dim]``; latents: ``[T, K + 1, B, A]``; log_p_gen, log_p_ref:
            ``[T, K, B]``; reward, terminated, truncated: ``[T, B]``.
    """
    num_env_steps, num_steps = log_p_gen.shape[:2]
    batch = log_p_gen.shape[2:]
    last = (jnp.arange(num_steps) == num_steps - 1).astype(jnp.float32)[None, :, None]

    def at_last(x):
        return (x[:, None] * last).reshape(num_env_steps * num_steps, *batch)

    def flat(x):
        return x.reshape(num_env_steps * num_steps, *x.shape[2:])

    step = jnp.broadcast_to(jnp.arange(num_steps, dtype=jnp.int32)[None, :, None], last.shape)
    return AugmentedTransitions(
        obs=flat(jnp.broadcast_to(obs[:, None], (num_env_steps, num_steps, *obs.shape[1:]))),
        latent=flat(latents[:, :-1]),
        step=flat(jnp.broadcast_to(step, (num_env_steps, num_steps, *batch))),
        next_latent=flat(latents[:, 1:]),
        reward=at_last(reward),
        is_last=flat(jnp.broadcast_to(last, (num_env_steps, num_steps, *batch))),
        terminated=at_last(terminated),
        truncated=at_last(truncated),
        log_p_gen=flat(log_p_gen),
        log_p_ref=flat(log_p_ref),
    )


def step_discounts(is_last: jax.Array, gamma: float, denoising_gamma: float) -> jax.Array:
    """Per augmented step discount: ``gamma`` across the env transition, ``denoising_gamma``
    between denoising steps of one env step."""
    return jnp.where(is_last > 0, gamma, denoising_gamma)


def soft_rewards(
    reward: jax.Array,
    log_ratio: jax.Array,
    temperature: jax.Array | float,
    *,
    mode: Literal["paper", "official"] = "paper",
    next_log_ratio: jax.Array | None = None,
    discount: jax.Array | float = 1.0,
) -> jax.Array:
    """Per augmented step soft reward, ``[N, ...]``.

    * ``paper``: ``r - alpha l_k``, the step's own term of the joint-chain KL;
    * ``official``: ``r - discount alpha l_{k+1}`` with ``next_log_ratio`` the next augmented
      step's ``l``: the code's placement, where a step's own ``l`` enters through the advantage.

    ``reward`` is the env reward on the last denoising step and 0 elsewhere.
    """
    if mode == "paper":
        return reward - temperature * log_ratio
    if mode == "official":
        if next_log_ratio is None:
            raise ValueError("mode='official' needs next_log_ratio")
        return reward - discount * temperature * next_log_ratio
    raise ValueError(f"unknown soft-reward mode {mode!r}; accepted: {SOFT_REWARD_MODES}")


def entropy_estimate(log_ratio: jax.Array, num_steps: int) -> jax.Array:
    """``-K mean(l)``: one env step's entropy estimate (relative to the prior's, whose entropy is
    a constant), from log-ratios of any shape averaged over every denoising step in them."""
    return -num_steps * jnp.mean(log_ratio)


# --- networks on augmented states ----------------------------------------------------------------


def augmented_features(
    obs: jax.Array, latent: jax.Array, step: jax.Array, num_steps: int, prior_std: float
) -> jax.Array:
    """``[s, x / prior_std, tanh(x), one_hot(k)]``, ``[..., obs_dim + 2 A + K + 1]``: the latent
    both on its own scale and squashed (what the env will see), and the denoising level."""
    obs = jnp.broadcast_to(obs, (*latent.shape[:-1], obs.shape[-1]))
    level = jax.nn.one_hot(step, num_steps + 1)
    return jnp.concatenate([obs, latent / prior_std, jnp.tanh(latent), level], axis=-1)


class AugmentedValue(nn.Module):
    """``V(s, x_k, k)`` over augmented states: an MLP on :func:`augmented_features`, levels
    ``k = 0 .. K`` (``K`` is used by DiffSAC's value of a finished chain). Returns ``[...]``."""

    hidden_dims: Sequence[int]
    num_steps: int
    prior_std: float = PRIOR_STD
    activation: str = "tanh"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, latent: jax.Array, step: jax.Array) -> jax.Array:
        features = augmented_features(obs, latent, step, self.num_steps, self.prior_std)
        return MLP(self.hidden_dims, 1, self.activation, self.layer_norm)(features)[..., 0]


def prior_log_prob(x0: jax.Array, prior_std: float) -> jax.Array:
    """``log N(x0; 0, prior_std^2 I)``, ``[...]``."""
    return gaussian_log_prob(x0, jnp.zeros_like(x0), jnp.full_like(x0, math.log(prior_std)))
