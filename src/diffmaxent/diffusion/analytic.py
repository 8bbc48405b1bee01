"""Exact quantities for Gaussian and Gaussian-mixture policies, used as ground truth by tests and
benchmarks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffmaxent.diffusion.samplers import EpsFn


def gaussian_eps_fn(mean: jax.Array, std: jax.Array) -> EpsFn:
    """The exact noise predictor of ``a ~ N(mean, diag(std^2))`` (``mean``, ``std`` broadcastable
    to ``[..., A]``).

    With ``a_t = sqrt(abar) a + sqrt(1 - abar) eps``, ``a_t`` is Gaussian with mean
    ``sqrt(abar) mean`` and variance ``abar std^2 + 1 - abar`` per dimension, so
    ``E[eps | a_t] = -sqrt(1 - abar) grad log p_t(a_t)
                   = sqrt(1 - abar) (a_t - sqrt(abar) mean) / (abar std^2 + 1 - abar)``.
    Returns ``eps_fn(noisy_action [..., A], log_snr [...]) -> eps [..., A]``."""
    mean = jnp.asarray(mean)
    var = jnp.asarray(std) ** 2

    def eps_fn(noisy_action: jax.Array, lam: jax.Array) -> jax.Array:
        lam = jnp.asarray(lam)[..., None]
        abar, one_minus = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
        return (
            jnp.sqrt(one_minus) * (noisy_action - jnp.sqrt(abar) * mean) / (abar * var + one_minus)
        )

    return eps_fn


def gaussian_log_prob(action: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``log N(action | mean, diag(std^2))`` summed over the last axis: ``[..., A] -> [...]``."""
    z = (action - mean) / std
    return jnp.sum(-0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def mixture_eps_fn(means: jax.Array, std: float) -> EpsFn:
    """The exact noise predictor of an equal-weight mixture of ``N(means[c], std^2 I)``
    (``means [C, A]``): unlike a Gaussian's, it is not linear in ``a_t``.

    ``a_t`` is the mixture of ``N(sqrt(abar) means[c], v I)`` with ``v = abar std^2 + 1 - abar``,
    so ``E[eps | a_t] = sqrt(1 - abar) sum_c r_c(a_t) (a_t - sqrt(abar) means[c]) / v`` with
    ``r_c`` the components' posterior responsibilities.
    Returns ``eps_fn(noisy_action [..., A], log_snr [...]) -> eps [..., A]``."""
    means = jnp.asarray(means)

    def eps_fn(noisy_action: jax.Array, lam: jax.Array) -> jax.Array:
        lam = jnp.asarray(lam)[..., None]
        abar, one_minus = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
        var = abar * std**2 + one_minus  # [..., 1]
        offsets = noisy_action[..., None, :] - jnp.sqrt(abar)[..., None] * means  # [..., C, A]
        responsibilities = jax.nn.softmax(-0.5 * jnp.sum(offsets**2, -1) / var, axis=-1)
        mean_offset = jnp.sum(responsibilities[..., None] * offsets, axis=-2)
        return jnp.sqrt(one_minus) * mean_offset / var

    return eps_fn


def mixture_log_prob(action: jax.Array, means: jax.Array, std: float) -> jax.Array:
    """``log`` of the equal-weight mixture of ``N(means[c], std^2 I)`` at ``action [..., A]``."""
    means = jnp.asarray(means)
    per_component = gaussian_log_prob(action[..., None, :], means, std)  # [..., C]
    return jax.scipy.special.logsumexp(per_component, axis=-1) - jnp.log(means.shape[0])
