"""Log-probability of a diffusion policy by numerical integration over noise levels.

**Identity.** Fix a clean action ``a`` (dimension ``d``) and write ``x_lam = alpha a + sigma eps``
(``alpha^2 = sigmoid(lam)``, ``sigma^2 = sigmoid(-lam)``, ``eps ~ N(0, I)``). Let
``F(lam) = E_eps[log p_lam(x_lam)]`` with ``p_lam`` the policy noised to log-SNR ``lam``. Then
``F(+inf) = log p(a)``, ``F(-inf) = -d/2 log(2 pi e)`` and, pointwise in ``a``,

    dF/dlam = f(lam) / 2,    f(lam) = d sigmoid(lam) - E_eps || eps - eps*(x_lam, lam) ||^2,

with ``eps*`` the exact noise prediction ``-sigma grad log p_lam``. Integrating over the whole line
gives the paper's eq. 19 / Theorem 6 (Kong et al. 2023's information-theoretic form); on a range
``[lam_lo, lam_hi]`` it gives the exact split

    log p(a) = F(lam_lo)  +  1/2 int_{lam_lo}^{lam_hi} f dlam  +  1/2 int_{lam_hi}^{inf} f dlam.
               (prior)       (quadrature below)                 (data term, dropped)

* **Prior term.** Replacing ``p_{lam_lo}`` by ``N(0, I)``, the distribution every sampler starts
  from, gives ``F(lam_lo) = -d/2 log(2 pi e) - sigmoid(lam_lo) (||a||^2 - d) / 2`` in closed form;
  what this misses is ``O(sigmoid(lam_lo))`` = 7e-5 per dimension at ``LOG_SNR_MIN``.
* **Quadrature.** ``f`` is estimated at each node with ``num_samples`` noise draws, independent
  across nodes. Each node's estimate is unbiased for ``f``, so the only bias is the rule's.
  ``antithetic=True`` uses pairs ``(eps, -eps)``: that cancels the part of the error odd in ``eps``
  but doubles up the even part ``||eps||^2``, which dominates at high SNR; alone it *raised* the
  per-action standard deviation (e.g. 0.73 -> 0.99 nats per dim at std 1, 12 nodes x 8 samples).
  With the control variate, which removes the even part, the pairs cancel most of what is left
  (12 x 8: 0.23 -> 0.01 at std 1, 0.34 -> 0.19 on a 4-mode mixture; docs/benchmarks.md), so the
  ``fast`` preset uses both; the default is off, as the paper.
* **Data term.** ``1/2 int_{lam_hi}^{inf} f`` needs the network beyond its trained range, so it is
  dropped. For a policy that is locally Gaussian with per-dimension std ``s`` it equals
  ``1/2 log(sigmoid(lam_hi) + sigmoid(-lam_hi) / s^2) ~= exp(-lam_hi) / (2 s^2)`` per dimension:
  at ``lam_hi = LOG_SNR_MAX`` that is 0.008 nats at s = 0.05 and 0.05 nats at s = 0.02. With the
  exact denoiser the Gauss-Legendre estimator therefore converges, as nodes are added, to
  ``log p(a)`` minus this term, which vanishes as ``lam_hi -> inf``.

**Rules** (``logprob_rule``):

* ``"gauss_legendre"`` (**default**): Gauss-Legendre nodes in ``lam`` on ``log_snr_range``, plus
  the prior term. In ``lam`` the integrand is a smooth bump (for a Gaussian of std ``s`` it rises
  around ``lam ~ -2 log s`` and decays like ``exp(-lam)``), so a few nodes suffice. The default
  range is the schedule's, ``[LOG_SNR_MIN, LOG_SNR_MAX] = [-9.56, 10.09]``: the range the network
  is trained on when QNE draws ``t ~ U[T_MIN, T_MAX]``. A wider ``lam_hi`` shrinks the data term but
  only helps if the network is trained there too.
* ``"rectangle"``: the paper's eq. A46 / the official ``calc_log_prob``. On the time grid
  ``t_0 < ... < t_T``, each interval is evaluated at its noisier end ``t_k`` (the left end in
  ``abar``, as the paper says) with weight ``(abar_{k-1} - abar_k) / (abar_k (1 - abar_k))``, i.e. a
  rectangle rule in ``abar`` for ``int f / (abar (1 - abar)) dabar``. In ``abar`` the integrand of
  a narrow policy is a spike next to ``abar = 1`` that the uniform ``t`` grid under-resolves: at
  ``T = 20`` the cleanest node is ``t_1`` (log-SNR 4.8), so everything above, where the integrand
  of a policy with std ``s`` peaks (``lam ~ -2 log s``, 6 for s = 0.05), is one wide interval. The
  noisiest weight (102.8 of a total 114.6 at ``T = 20``) multiplies that level's error. No prior
  term, as in the paper.

Measured with the exact denoiser of a Gaussian policy, per dimension (``tests/test_diffusion.py``):

* expected error: ``rectangle`` (``T = 20``) -0.09 / -0.41 / -0.82 / -1.60 nats at std
  0.3 / 0.1 / 0.05 / 0.02 (0 at std 1); ``gauss_legendre`` (12 nodes) +0.000 / -0.002 / -0.010 /
  -0.051, almost all of it the dropped data term;
* per-action standard deviation of the error: the default (12 nodes x 8 samples = 96 passes)
  0.72 / 0.59 / 0.34 nats at std 1 / 0.3 / 0.05; the paper's 20 x 50 = 1000 passes
  0.11 / 0.12 / 0.36. The default's variance is the price of its weights on high-SNR nodes, where
  ``||eps||^2`` dominates the noise; raise ``num_samples`` if it matters.

``clip_x0=True`` applies the official code's x0 clipping to ``eps_fn`` before integrating (an
option, off by default: it changes the density being integrated).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.diffusion.samplers import EpsFn, clip_denoiser
from diffmaxent.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN, alpha_bar, log_snr, time_grid

LOGPROB_RULES: tuple[str, ...] = ("gauss_legendre", "rectangle")
DEFAULT_LOGPROB_RULE = "gauss_legendre"
DEFAULT_NUM_LEVELS = {"gauss_legendre": 12, "rectangle": 20}


def quadrature(
    rule: str = DEFAULT_LOGPROB_RULE,
    num_levels: int | None = None,
    log_snr_range: tuple[float, float] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Nodes ``lam [T]`` and weights ``w [T]`` with ``int f dlam ~= sum_k w_k f(lam_k)``.

    ``log_snr_range`` applies to ``"gauss_legendre"`` only (default: the schedule's range); the
    rectangle rule is defined on the schedule's time grid."""
    if rule not in LOGPROB_RULES:
        raise ValueError(f"unknown logprob_rule {rule!r}; expected one of {LOGPROB_RULES}")
    num_levels = DEFAULT_NUM_LEVELS[rule] if num_levels is None else num_levels
    if rule == "gauss_legendre":
        lo, hi = (LOG_SNR_MIN, LOG_SNR_MAX) if log_snr_range is None else log_snr_range
        nodes, weights = np.polynomial.legendre.leggauss(num_levels)  # on [-1, 1], float64
        half = 0.5 * (hi - lo)
        return (
            jnp.asarray(half * nodes + 0.5 * (hi + lo), jnp.float32),
            jnp.asarray(half * weights, jnp.float32),
        )
    t = time_grid(num_levels)
    abar = alpha_bar(t)
    lam = log_snr(t[1:])
    # abar (1 - abar) = sigmoid(lam) sigmoid(-lam), formed from lam to keep precision near abar = 1.
    weights = (abar[:-1] - abar[1:]) / (jax.nn.sigmoid(lam) * jax.nn.sigmoid(-lam))
    return lam, weights


def log_prob(
    eps_fn: EpsFn,
    key: jax.Array,
    action: jax.Array,
    *,
    logprob_rule: str = DEFAULT_LOGPROB_RULE,
    num_levels: int | None = None,
    num_samples: int = 8,
    antithetic: bool = False,
    log_snr_range: tuple[float, float] | None = None,
    clip_x0: bool = False,
    control_variate: bool = False,
) -> jax.Array:
    """Estimate ``log p(action)`` of the diffusion policy whose noise predictor is ``eps_fn``
    (see the module docstring for the derivation and the rules).

    ``action [..., A]`` -> ``[...]``. The noised actions ``[..., num_samples, T, A]`` go through
    ``eps_fn`` in **one** call with ``log_snr`` of shape ``[1, ..., 1, T]`` (broadcastable to
    ``[..., num_samples, T]``), so a network closure must
    broadcast its state over those axes (``NoiseNet`` does so left-aligned: pass
    ``obs [B, obs_dim]`` for ``action [B, A]``). ``num_levels`` defaults to 12 for
    ``"gauss_legendre"`` and to the paper's 20 for ``"rectangle"`` (the paper also uses
    ``num_samples=50``, without antithetic pairs). Cost: ``num_samples * num_levels`` network
    passes per action.
    """
    if antithetic and num_samples % 2:
        raise ValueError(f"antithetic sampling needs an even num_samples, got {num_samples}")
    if clip_x0:
        eps_fn = clip_denoiser(eps_fn)
    lam, weights = quadrature(logprob_rule, num_levels, log_snr_range)
    num_nodes = lam.shape[0]
    dim = action.shape[-1]
    lead = action.shape[:-1]

    if antithetic:
        half = jax.random.normal(key, (*lead, num_samples // 2, num_nodes, dim), action.dtype)
        noise = jnp.concatenate([half, -half], axis=-3)
    else:
        noise = jax.random.normal(key, (*lead, num_samples, num_nodes, dim), action.dtype)
    alpha = jnp.sqrt(jax.nn.sigmoid(lam))[:, None]
    sigma = jnp.sqrt(jax.nn.sigmoid(-lam))[:, None]
    noisy = alpha * action[..., None, None, :] + sigma * noise  # [..., N, T, A]
    # One level per node, broadcastable to [..., N, T]: the network conditions once per node.
    eps_hat = eps_fn(noisy, lam.reshape((1,) * (noisy.ndim - 2) + (num_nodes,)))

    sq_error = jnp.sum((noise - eps_hat) ** 2, axis=-1)  # [..., N, T]
    if control_variate:
        sq_error = sq_error - _control_variate(noise, sq_error)
    sq_error = jnp.mean(sq_error, axis=-2)  # [..., T]
    integrand = dim * jax.nn.sigmoid(lam) - sq_error
    constant = -0.5 * dim * math.log(2.0 * math.pi * math.e)
    estimate = constant + 0.5 * jnp.sum(weights * integrand, axis=-1)
    if logprob_rule == "gauss_legendre":
        lam_lo = LOG_SNR_MIN if log_snr_range is None else log_snr_range[0]
        abar_lo = 1.0 / (1.0 + math.exp(-lam_lo))
        prior = -0.5 * abar_lo * (jnp.sum(action**2, axis=-1) - dim)
        estimate = estimate + prior
    return estimate


def _control_variate(noise: jax.Array, sq_error: jax.Array) -> jax.Array:
    """``c_k (||eps||^2 - d)`` per level ``k``: zero in expectation, so subtracting it keeps the
    estimate unbiased, and with ``c_k`` the regression coefficient of ``||eps - eps_hat||^2`` on
    ``||eps||^2`` it removes the chi-square noise of ``||eps||^2``. That noise dominates at high
    SNR, where ``eps_hat`` barely depends on ``eps`` (``c -> 1``); at low SNR ``eps_hat ~ eps``
    and ``c -> 0``, which keeps the cancellation that a fixed replacement of ``||eps||^2`` by
    ``d`` would destroy. ``c_k`` is pooled over every action and sample at level ``k`` (the
    whole batch), so its own estimation error adds a bias of order 1 / (batch x samples)."""
    centered = jnp.sum(noise**2, axis=-1) - noise.shape[-1]  # [..., N, T], mean 0
    pooled = tuple(range(centered.ndim - 1))
    coefficient = jnp.mean(sq_error * centered, axis=pooled) / jnp.mean(centered**2, axis=pooled)
    return jax.lax.stop_gradient(coefficient) * centered
