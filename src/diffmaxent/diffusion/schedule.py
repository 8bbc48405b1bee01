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

Discrete DDPM schedules. Agents that follow DDPM-style code (Ho et al. 2020; jaxrl5 and
Diffusion-QL, which QSM, DIPO and QVPO build on) use ``T`` noise levels given by betas,
``abar_t = prod_{i <= t} (1 - beta_i)``, sample ``t`` uniformly from ``{1, ..., T}`` in training and
denoise down to the clean action ``abar_0 = 1``. :func:`discrete_log_snr_grid` writes such a
schedule as a log-SNR grid, ``[+inf, lambda_1, ..., lambda_T]`` (clean first), which the samplers
run on as on the continuous grids (``spacing="vp"`` or ``"linear"``); on it a DDPM step from level
``t`` to ``t - 1`` has exactly the variance ``beta_t``. Both named schedules are the VP SDE with a
linear ``beta(tau) = b_min + (b_max - b_min) tau`` on ``tau in [0, 1]``, integrated over each of
``T`` equal steps, ``beta_t = 1 - exp(-int beta(tau) dtau)``, so that
``log abar_t = -b_min tau - (b_max - b_min) tau^2 / 2`` at ``tau = t / T``:

* ``"vp"``: ``b_min = 0.1, b_max = 10``, Diffusion-QL's and jaxrl5's ``vp_beta_schedule``
  (QSM's default; at ``T = 5``: ``abar_1 = 0.80``, ``abar_5 = 0.0064``);
* ``"linear"``: ``b_min = 0.1, b_max = 20``, DDPM's linear betas ``1e-4 .. 0.02`` over 1000 steps
  in continuous time (Song et al. 2021, the VP SDE), valid for any ``T``. (The literal
  ``linspace(1e-4, 0.02, T)`` leaves ``abar_T = 0.95`` at ``T = 5``, i.e. almost no noise.)
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

COSINE_S = 0.008
T_MIN = 1e-3
T_MAX = 0.9946

Spacing = Literal["time", "log_snr", "vp", "linear"]
DISCRETE_SCHEDULES: tuple[str, ...] = ("vp", "linear")
SPACINGS: tuple[str, ...] = ("time", "log_snr", *DISCRETE_SCHEDULES)

# (b_min, b_max) of the linear beta(tau) each discrete schedule integrates (module docstring).
_BETA_RANGES = {"vp": (0.1, 10.0), "linear": (0.1, 20.0)}

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


def discrete_betas(num_steps: int, schedule: str) -> np.ndarray:
    """``[T]`` float64 betas of the discrete schedule ``schedule`` (``"vp"`` or ``"linear"``, see
    the module docstring) with ``T = num_steps``."""
    if schedule not in _BETA_RANGES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {DISCRETE_SCHEDULES}")
    b_min, b_max = _BETA_RANGES[schedule]
    t = np.arange(1, num_steps + 1)
    return -np.expm1(-b_min / num_steps - (b_max - b_min) * (2 * t - 1) / (2 * num_steps**2))


def discrete_log_snr_grid(num_steps: int, schedule: str) -> jax.Array:
    """``[num_steps + 1]`` log-SNRs ``[+inf, lambda_1, ..., lambda_T]`` of a discrete schedule:
    the clean action first (``abar_0 = 1``), then ``lambda_t = log(abar_t / (1 - abar_t))``,
    computed in float64 from ``log abar_t = sum_i log(1 - beta_i)``."""
    log_abar = np.cumsum(np.log1p(-discrete_betas(num_steps, schedule)))
    lams = log_abar - np.log(-np.expm1(log_abar))
    return jnp.asarray(np.concatenate([[np.inf], lams]), jnp.float32)


def log_snr_grid(num_steps: int, spacing: Spacing = "time") -> jax.Array:
    """``[num_steps + 1]`` log-SNR levels from clean to noisy.

    ``spacing="time"`` is the official MaxEntDP grid from ``LOG_SNR_MAX`` to ``LOG_SNR_MIN``,
    uniform in ``t`` (see :func:`time_grid`); ``spacing="log_snr"`` is uniform in ``lambda`` over
    the same end points; ``"vp"`` and ``"linear"`` are the discrete DDPM schedules of
    :func:`discrete_log_snr_grid` (clean end ``+inf``)."""
    if spacing == "time":
        return log_snr(time_grid(num_steps))
    if spacing == "log_snr":
        return jnp.linspace(LOG_SNR_MAX, LOG_SNR_MIN, num_steps + 1)
    if spacing in DISCRETE_SCHEDULES:
        return discrete_log_snr_grid(num_steps, spacing)
    raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")


def sample_log_snr(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Training noise levels as in the official QNE update: ``t ~ U[T_MIN, T_MAX]`` (continuous,
    not on the sampling grid), returned as log-SNR ``[*shape]``."""
    return log_snr(jax.random.uniform(key, shape, minval=T_MIN, maxval=T_MAX))


def sample_grid_log_snr(
    key: jax.Array, shape: tuple[int, ...], num_steps: int, spacing: Spacing
) -> jax.Array:
    """Training noise levels on a sampling grid, as DDPM-style code draws them: one of the
    ``num_steps`` noisy levels of :func:`log_snr_grid` (the clean one excluded) uniformly,
    returned as log-SNR ``[*shape]``."""
    grid = log_snr_grid(num_steps, spacing)
    return grid[jax.random.randint(key, shape, 1, num_steps + 1)]
