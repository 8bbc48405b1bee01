"""Training targets for the noise predictor when the target policy is ``exp(Q / beta) / Z``.

There are no samples of the target policy ``pi(a) ∝ exp(Q(s, a) / beta)`` (paper eq. 9), only the
critic. By Lemma 2 (eq. 12) the reverse transition is a Gaussian reweighted by the target:
``p(a0 | a_t) ∝ exp(Q(a0) / beta) N(a0 | a_t / alpha, (sigma / alpha)^2 I)``. Writing
``a0 = (a_t + sigma n) / alpha``, the exact noise target is

    eps*(a_t) = -sigma grad log p_t(a_t) = -E[n | a_t]                        (eqs. 16, A33)

and the three estimators below approximate it from ``K`` candidates ``n_i`` with self-normalised
weights ``w_i = softmax(Q(a0_i) / beta)``:

* ``"qne"`` (Q-weighted noise estimation, eqs. 14-17, the paper's method):
  ``eps_hat = -sum_i w_i n_i``. No critic gradients.
* ``"idem"`` (eq. A42): ``grad log p_t = (1 / alpha) E[grad_a0 Q(a0) / beta | a_t]``, so
  ``eps_hat = -(sigma / alpha) / beta * sum_i w_i grad Q(a0_i)``. The integration by parts behind it
  ignores the action box, so it is exact only when the target has negligible mass at the bounds.
* ``"qsm"`` (Q-score matching): ``eps_hat = -sigma grad Q(a_t) / beta``, i.e. it treats the noised
  policy as ``exp(Q / beta)`` itself; right only as ``sigma -> 0``.

**Bounded actions.** The critic is undefined outside ``[low, high]^A``, so, as in the paper
(Sec. 3.3) and the official code, ``n`` is drawn from a standard normal truncated per dimension to
``[(alpha low - a_t) / sigma, (alpha high - a_t) / sigma]``, which keeps every ``a0`` in the box.
The truncated proposal only changes the constant in the importance weights, so ``"qne"``
estimates ``-E[n | a_t]`` for the target restricted to the box, which is what the policy can
represent.

The draw does not use ``jax.random.truncated_normal``: it inverts the CDF through ``erf``, which
saturates in float32, so when both bounds lie beyond about 6 on the same side (``a_t`` outside the
box by more than ``6 sigma``) it returns the **far** bound (e.g. ``n = -328`` instead of about
``-219`` for ``a_t = 5`` at log-SNR 8), which would make an enormous target. The official code
guards only against NaN (JAX issue 10951). :func:`truncated_standard_normal` inverts the CDF in
log space instead; any NaN that remains is still replaced by a standard normal clipped to the
bounds and counted in the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffmaxent.diffusion.networks import broadcast_leading
from diffmaxent.nn import left_align

_LOG_P_DIRECT = -60.0  # below this, exp(log p) nears float32's smallest normal; solve by Newton

QFn = Callable[[jax.Array, jax.Array], jax.Array]

SCORE_TARGETS: tuple[str, ...] = ("qne", "idem", "qsm")
DEFAULT_SCORE_TARGET = "qne"


def _inverse_log_ndtr(log_p: jax.Array) -> jax.Array:
    """``x`` with ``log Phi(x) = log_p``: ``ndtri(exp(log_p))`` while ``exp`` is representable, else
    Newton steps on ``log_ndtr`` from the tail asymptote ``x = -sqrt(-2 log_p)`` (the slope of
    ``log Phi`` there is about ``|x|``, so four steps reach float32 precision)."""
    direct = jax.scipy.special.ndtri(jnp.exp(log_p))
    tail_log_p = jnp.minimum(log_p, _LOG_P_DIRECT)

    def newton(_, x):
        log_cdf = jax.scipy.special.log_ndtr(x)
        slope = jnp.exp(-0.5 * x**2 - 0.5 * math.log(2.0 * math.pi) - log_cdf)
        return x - (log_cdf - tail_log_p) / slope

    # A loop rather than unrolled steps: log_ndtr is a large graph and compiles slowly on CPU.
    x = jax.lax.fori_loop(0, 4, newton, -jnp.sqrt(-2.0 * tail_log_p))
    return jnp.where(log_p > _LOG_P_DIRECT, direct, x)


def truncated_standard_normal(
    key: jax.Array, lower: jax.Array, upper: jax.Array, shape: tuple[int, ...], dtype=jnp.float32
) -> jax.Array:
    """``N(0, 1)`` truncated to ``[lower, upper]`` (broadcast to ``shape``), exact far in the tails.

    The interval is first mirrored, if needed, so that its midpoint is not positive; there ``Phi``
    is small and ``log_ndtr`` keeps its full relative precision. The CDF is then inverted at
    ``Phi(lo) (1 - u) + Phi(hi) u`` in log space (see :func:`_inverse_log_ndtr`)."""
    lower = jnp.broadcast_to(lower, shape).astype(dtype)
    upper = jnp.broadcast_to(upper, shape).astype(dtype)
    flip = lower + upper > 0
    lo = jnp.where(flip, -upper, lower)
    hi = jnp.where(flip, -lower, upper)
    u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    log_p = jnp.logaddexp(
        jax.scipy.special.log_ndtr(lo) + jnp.log1p(-u), jax.scipy.special.log_ndtr(hi) + jnp.log(u)
    )
    x = jnp.clip(_inverse_log_ndtr(log_p), lo, hi)
    return jnp.where(flip, -x, x)


def truncated_candidate_noise(
    key: jax.Array,
    noisy_action: jax.Array,
    log_snr: jax.Array,
    num_samples: int,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw ``K = num_samples`` candidates per noisy action.

    ``noisy_action [..., A]``, ``log_snr [...]`` -> ``(noise [..., K, A], clean [..., K, A],
    nan_mask [..., K, A])`` with ``clean = (a_t + sigma noise) / alpha`` in ``[low, high]``."""
    trunc_key, fallback_key = jax.random.split(key)
    alpha = jnp.sqrt(jax.nn.sigmoid(log_snr))[..., None, None]
    sigma = jnp.sqrt(jax.nn.sigmoid(-log_snr))[..., None, None]
    x = noisy_action[..., None, :]
    lower = (alpha * low - x) / sigma
    upper = (alpha * high - x) / sigma
    shape = (*noisy_action.shape[:-1], num_samples, noisy_action.shape[-1])
    noise = truncated_standard_normal(trunc_key, lower, upper, shape, noisy_action.dtype)
    fallback = jnp.clip(jax.random.normal(fallback_key, shape, noisy_action.dtype), lower, upper)
    nan_mask = jnp.isnan(noise)
    noise = jnp.where(nan_mask, fallback, noise)
    # At low SNR 1/alpha is ~119: the clip only removes rounding just outside the box.
    clean = jnp.clip((x + sigma * noise) / alpha, low, high)
    return noise, clean, nan_mask


def noise_target(
    key: jax.Array,
    obs: jax.Array,
    noisy_action: jax.Array,
    log_snr: jax.Array,
    q_fn: QFn,
    *,
    temperature: float | jax.Array,
    num_samples: int,
    score_target: str = DEFAULT_SCORE_TARGET,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The regression target for ``eps_phi(a_t, lam, s)`` (see the module docstring).

    * ``obs [..., obs_dim]``, ``noisy_action [..., A]``, ``log_snr [...]`` (or ``[..., 1]``);
    * ``q_fn(obs [..., 1, obs_dim], actions [..., K, A]) -> [..., K]``: ``obs`` arrives with a
      size-1 candidate axis, broadcastable to the actions (for ``"qsm"``, ``K = 1`` and the
      action is ``a_t``). ``"idem"`` and ``"qsm"`` differentiate ``sum(q_fn(...))`` with respect
      to the actions, which is the per-candidate gradient only if each output depends on its own
      action alone (true for MLP critics);
    * ``temperature``: ``beta``; ``num_samples``: ``K`` (the paper uses 500).

    Returns ``(target [..., A], metrics)``, the target with its gradient stopped. Metrics (means
    over the batch): ``target_norm``; for ``"qne"``/``"idem"`` also ``ess`` (``1 / sum w_i^2``),
    ``ess_fraction`` (``ess / K``), ``max_weight`` and ``nan_fraction`` (share of truncated-normal
    draws that needed the fallback).
    """
    if score_target not in SCORE_TARGETS:
        raise ValueError(f"unknown score_target {score_target!r}; expected one of {SCORE_TARGETS}")
    lead = noisy_action.shape[:-1]
    lam = jnp.asarray(log_snr, noisy_action.dtype)
    if lam.ndim == noisy_action.ndim:  # the [..., 1] form
        lam = lam[..., 0]
    lam = broadcast_leading(lam, lead, 0)
    alpha = jnp.sqrt(jax.nn.sigmoid(lam))[..., None]
    sigma = jnp.sqrt(jax.nn.sigmoid(-lam))[..., None]

    if score_target == "qsm":
        obs_one = left_align(obs, len(lead) + 1, 1)
        q, pullback = jax.vjp(lambda a: q_fn(obs_one, a), noisy_action[..., None, :])
        (grad,) = pullback(jnp.ones_like(q))
        target = -sigma * grad[..., 0, :] / temperature
        metrics = {}
    else:
        noise, clean, nan_mask = truncated_candidate_noise(
            key, noisy_action, lam, num_samples, low, high
        )
        # The state stays unbroadcast over candidates ([..., 1, obs_dim]); critics built on
        # nn.QNetwork project it once per state.
        obs_k = left_align(obs, len(lead) + 1, 1)
        if score_target == "qne":
            q = q_fn(obs_k, clean)
            weights = jax.nn.softmax(q / temperature, axis=-1)
            target = -jnp.sum(weights[..., None] * noise, axis=-2)
        else:  # idem
            q, pullback = jax.vjp(lambda a: q_fn(obs_k, a), clean)
            (grad,) = pullback(jnp.ones_like(q))
            weights = jax.nn.softmax(q / temperature, axis=-1)
            target = -(sigma / alpha) * jnp.sum(weights[..., None] * grad, axis=-2) / temperature
        ess = 1.0 / jnp.sum(weights**2, axis=-1)
        metrics = {
            "ess": jnp.mean(ess),
            "ess_fraction": jnp.mean(ess) / num_samples,
            "max_weight": jnp.mean(jnp.max(weights, axis=-1)),
            "nan_fraction": jnp.mean(nan_mask.astype(jnp.float32)),
        }
    target = jax.lax.stop_gradient(target)
    metrics["target_norm"] = jnp.mean(jnp.linalg.norm(target, axis=-1))
    return target, metrics
