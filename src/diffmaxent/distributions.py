"""The tanh-squashed Gaussian used by Gaussian SAC-style actors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_2 = math.log(2.0)


def tanh_log_det(pre_tanh: jax.Array) -> jax.Array:
    """log |d tanh(u)/du| = log(1 - tanh(u)^2), summed over the last axis, computed stably.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, which stays finite where
    ``tanh(u)`` rounds to ±1.
    """
    return jnp.sum(2.0 * (LOG_2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """Diagonal Gaussian log-density, summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)


def squashed_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample ``a = tanh(mean + std * eps)`` and its log-density.

    Args:
        mean, log_std: ``[..., A]`` parameters of the Gaussian before squashing.

    Returns:
        ``(action [..., A] in (-1, 1), log_prob [...])``.
    """
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    log_prob = gaussian_log_prob(pre_tanh, mean, log_std) - tanh_log_det(pre_tanh)
    return jnp.tanh(pre_tanh), log_prob


def squashed_gaussian_log_prob(
    action: jax.Array, mean: jax.Array, log_std: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """Log-density of an action in (-1, 1) under the squashed Gaussian (actions are clipped
    to ``±(1 - eps)`` before inverting tanh)."""
    pre_tanh = jnp.arctanh(jnp.clip(action, -1.0 + eps, 1.0 - eps))
    return gaussian_log_prob(pre_tanh, mean, log_std) - tanh_log_det(pre_tanh)
