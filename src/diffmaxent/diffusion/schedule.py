"""The variance-preserving noise schedule, written in log-SNR.

Notation. The MaxEntDP paper (eq. 4) writes the forward process as
``p(x_t | x_0) = N(x_t | sqrt(sigmoid(alpha_t)) x_0, sigmoid(-alpha_t) I)``,
where its ``alpha_t`` is the **log signal-to-noise ratio**. This module calls that quantity
``log_snr`` (``lambda``) and uses the DDPM names for the rest:

===========================  ==============  ===================================
paper                        here            meaning
===========================  ==============  ===================================
``alpha_t``                  ``log_snr``     ``lambda = log(abar / (1 - abar))``
``sigmoid(alpha_t)``         ``abar``        signal variance (alpha-bar)
``sigmoid(-alpha_t)``        ``1 - abar``    noise variance
``sqrt(sigmoid(alpha_t))``   ``alpha``       signal scale ``sqrt(abar)``
``sqrt(sigmoid(-alpha_t))``  ``sigma``       noise std ``sqrt(1 - abar)``
===========================  ==============  ===================================

so ``x_t = alpha * x_0 + sigma * eps`` with ``alpha**2 + sigma**2 = 1``.

The schedule is the continuous cosine schedule of improved DDPM (Nichol & Dhariwal 2021) with
``s = 0.008``, as in the official MaxEntDP code:
``abar(t) = cos^2(theta(t)) / cos^2(theta(0))`` with ``theta(t) = (t + s) / (1 + s) * pi / 2``,
used on ``t in [T_MIN, T_MAX] = [1e-3, 0.9946]`` (0.9946 is DPM-Solver's end point for this
schedule). At the ends ``abar = 0.99996`` (log-SNR +10.09) and ``abar = 7.1e-5`` (log-SNR -9.56).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

COSINE_S = 0.008
T_MIN = 1e-3
T_MAX = 0.9946

Spacing = Literal["time", "log_snr"]
SPACINGS: tuple[str, ...] = ("time", "log_snr")

_THETA0 = COSINE_S / (1.0 + COSINE_S) * math.pi / 2.0


def _theta(t):
    return (t + COSINE_S) / (1.0 + COSINE_S) * (math.pi / 2.0)


def _log_snr_float(t: float) -> float:
    theta = _theta(t)
    return 2.0 * math.log(math.cos(theta)) - math.log(
        math.sin(theta - _THETA0) * math.sin(theta + _THETA0)
    )


# The schedule's log-SNR range, computed in float64 once (no device work at import).
LOG_SNR_MAX = _log_snr_float(T_MIN)  # +10.095, the cleanest level
LOG_SNR_MIN = _log_snr_float(T_MAX)  # -9.555, the noisiest level


def alpha_bar(t: jax.Array) -> jax.Array:
    """``abar(t) = cos^2(theta(t)) / cos^2(theta(0))`` (the paper's ``sigmoid(alpha_t)``)."""
    return (jnp.cos(_theta(t)) / math.cos(_THETA0)) ** 2


def log_snr(t: jax.Array) -> jax.Array:
    """``lambda(t) = log(abar / (1 - abar))``, strictly decreasing in ``t``.

    ``1 - abar`` is formed as ``sin(theta - theta0) sin(theta + theta0) / cos^2(theta0)`` rather
    than by subtraction, so float32 keeps full relative precision at ``t = 1e-3`` where ``abar`` is
    0.99996."""
    theta = _theta(t)
    return 2.0 * jnp.log(jnp.cos(theta)) - jnp.log(
        jnp.sin(theta - _THETA0) * jnp.sin(theta + _THETA0)
    )


def time_from_log_snr(lam: jax.Array) -> jax.Array:
    """Inverse of :func:`log_snr`: ``cos(theta) = sqrt(abar) cos(theta0)`` solved with ``atan2``
    (``arccos`` loses precision next to 1, i.e. at high SNR)."""
    abar = jax.nn.sigmoid(lam)
    sin_theta = jnp.sqrt(jax.nn.sigmoid(-lam) + abar * math.sin(_THETA0) ** 2)
    theta = jnp.arctan2(sin_theta, jnp.sqrt(abar) * math.cos(_THETA0))
    return theta * (2.0 / math.pi) * (1.0 + COSINE_S) - COSINE_S


def alpha_bar_from_log_snr(lam: jax.Array) -> jax.Array:
    """``abar = sigmoid(lambda)``."""
    return jax.nn.sigmoid(lam)


def log_snr_from_alpha_bar(abar: jax.Array) -> jax.Array:
    """``lambda = log(abar) - log(1 - abar)``."""
    return jnp.log(abar) - jnp.log1p(-abar)


def alpha_from_log_snr(lam: jax.Array) -> jax.Array:
    """Signal scale ``alpha = sqrt(abar) = sqrt(sigmoid(lambda))``."""
    return jnp.sqrt(jax.nn.sigmoid(lam))


def sigma_from_log_snr(lam: jax.Array) -> jax.Array:
    """Noise std ``sigma = sqrt(1 - abar) = sqrt(sigmoid(-lambda))``; exact at high SNR, where
    ``1 - sigmoid(lambda)`` would cancel."""
    return jnp.sqrt(jax.nn.sigmoid(-lam))


def time_grid(num_steps: int) -> jax.Array:
    """``linspace(T_MIN, T_MAX, num_steps + 1)``: the official sampling and log-prob grid."""
    return jnp.linspace(T_MIN, T_MAX, num_steps + 1)


def log_snr_grid(num_steps: int, spacing: Spacing = "time") -> jax.Array:
    """``[num_steps + 1]`` log-SNR levels from clean (``LOG_SNR_MAX``) to noisy (``LOG_SNR_MIN``).

    ``spacing="time"`` is the official grid, uniform in ``t`` (see :func:`time_grid`);
    ``spacing="log_snr"`` is uniform in ``lambda`` over the same end points."""
    if spacing == "time":
        return log_snr(time_grid(num_steps))
    if spacing == "log_snr":
        return jnp.linspace(LOG_SNR_MAX, LOG_SNR_MIN, num_steps + 1)
    raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")


def sample_log_snr(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Training noise levels as in the official QNE update: ``t ~ U[T_MIN, T_MAX]`` (continuous,
    not on the sampling grid), returned as log-SNR ``[*shape]``."""
    return log_snr(jax.random.uniform(key, shape, minval=T_MIN, maxval=T_MAX))
