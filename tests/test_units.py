"""Unit tests of the foundation's math and containers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffmaxent.agents.common import polyak_update, temperature_loss
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.critics import td_target
from diffmaxent.distributions import (
    squashed_gaussian_log_prob,
    squashed_gaussian_sample,
    tanh_log_det,
)
from diffmaxent.nn import householder_q, mish, orthogonal_init

# --- squashed Gaussian ----------------------------------------------------------------------------


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.3, 0.7), (-1.2, 0.2), (2.0, 1.5)])
def test_squashed_gaussian_density_matches_numerical_derivative_of_cdf(mean, std):
    # Reference: the CDF of a = tanh(u) is Phi((atanh(a) - mean) / std); its central difference is
    # the density, computed without using the change-of-variables formula under test.
    grid = np.linspace(-0.995, 0.995, 41)
    h = 1e-5
    cdf = lambda a: norm.cdf((np.arctanh(a) - mean) / std)  # noqa: E731
    reference = (cdf(grid + h) - cdf(grid - h)) / (2 * h)
    log_prob = squashed_gaussian_log_prob(
        jnp.asarray(grid[:, None], jnp.float64 if jax.config.x64_enabled else jnp.float32),
        jnp.full((41, 1), mean),
        jnp.full((41, 1), math.log(std)),
    )
    np.testing.assert_allclose(np.exp(np.asarray(log_prob)), reference, rtol=2e-3, atol=1e-4)


def test_squashed_gaussian_density_integrates_to_one():
    grid = np.linspace(-1 + 1e-7, 1 - 1e-7, 200_001)
    density = np.exp(
        np.asarray(
            squashed_gaussian_log_prob(
                jnp.asarray(grid[:, None]), jnp.full((1,), 0.4), jnp.full((1,), math.log(0.8))
            )
        )
    )
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=2e-3)


def test_sample_log_prob_is_the_density_of_the_returned_action_and_sums_over_dims():
    key = jax.random.PRNGKey(0)
    mean = jnp.array([[0.1, -0.5, 0.9]] * 64)
    log_std = jnp.array([[-0.3, 0.2, -1.0]] * 64)
    action, log_prob = squashed_gaussian_sample(mean, log_std, key)
    assert action.shape == (64, 3) and log_prob.shape == (64,)
    assert np.all(np.abs(action) < 1)
    recomputed = squashed_gaussian_log_prob(action, mean, log_std)
    # float32 atanh loses precision near |a| = 1; 1e-3 nats is far below any learning signal.
    np.testing.assert_allclose(log_prob, recomputed, atol=1e-3)


def test_tanh_log_det_is_finite_where_tanh_saturates():
    u = jnp.array([[0.0], [5.0], [-30.0], [80.0]])
    value = tanh_log_det(u)
    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(value[:2], np.log(1 - np.tanh([0.0, 5.0]) ** 2), rtol=1e-4)


# --- TD target, Polyak, temperature ---


def test_td_target_masks_only_termination():
    reward = jnp.array([1.0, 1.0])
    next_value = jnp.array([10.0, 10.0])
    terminated = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(td_target(reward, terminated, next_value, 0.9), [1.0, 10.0])


def test_one_exp_mish_matches_the_textbook_form_and_its_gradient():
    x = jnp.linspace(-90.0, 90.0, 40001)
    textbook = x * jnp.tanh(jnp.logaddexp(x, 0.0))
    np.testing.assert_allclose(mish(x), textbook, atol=5e-6, rtol=1e-5)
    grads = jax.vmap(jax.grad(mish))(x)
    textbook_grads = jax.vmap(jax.grad(lambda v: v * jnp.tanh(jnp.logaddexp(v, 0.0))))(x)
    assert np.isfinite(np.asarray(grads)).all()
    np.testing.assert_allclose(grads, textbook_grads, atol=2e-5)


@pytest.mark.parametrize("shape", [(64, 64), (2, 64), (64, 3), (5, 4, 6), (128, 1)])
def test_orthogonal_init_draws_jaxs_orthogonal_matrix_without_a_custom_call(shape):
    key = jax.random.PRNGKey(3)
    init = orthogonal_init(1.5)
    weights = init(key, shape)
    # The same Gaussian draw and the same Q factor (R's diagonal positive) as JAX's initialiser.
    expected = jax.nn.initializers.orthogonal(1.5)(key, shape)
    np.testing.assert_allclose(weights, expected, atol=2e-5)
    flat = np.asarray(weights).reshape(-1, shape[-1]) / 1.5
    small = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(small, np.eye(len(small)), atol=2e-5)
    # No LAPACK custom call in the program: XLA:CPU's QR kernel can hang its own thread pool.
    hlo = jax.jit(init, static_argnums=1).lower(key, shape).compile().as_text()
    assert "custom_call_target" not in hlo


def test_householder_q_factor_reconstructs_the_matrix_with_a_positive_diagonal():
    matrix = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
    q = householder_q(matrix)
    r = q.T @ matrix
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-5)  # upper triangular
    assert np.all(np.diag(r) > 0)
    np.testing.assert_allclose(q @ r, matrix, atol=1e-5)


def test_polyak_update():
    target = {"w": jnp.array([0.0, 10.0]), "b": {"c": jnp.array(4.0)}}
    online = {"w": jnp.array([1.0, 0.0]), "b": {"c": jnp.array(0.0)}}
    new = polyak_update(target, online, 0.1)
    np.testing.assert_allclose(new["w"], [0.1, 9.0])
    np.testing.assert_allclose(new["b"]["c"], 3.6)
    same = polyak_update(target, online, 0.0)
    np.testing.assert_allclose(same["w"], target["w"])


def test_temperature_gradient_lowers_alpha_when_entropy_exceeds_target():
    grad_high = jax.grad(temperature_loss)(jnp.array(0.0), jnp.array([2.0]), -1.0)
    grad_low = jax.grad(temperature_loss)(jnp.array(0.0), jnp.array([-3.0]), -1.0)
    assert grad_high > 0 > grad_low  # gradient descent: log-alpha down when entropy is too high


# --- replay buffer -------------------------------------------------------------------------------


def _fill(buffer: ReplayBuffer, values) -> None:
    for v in values:
        buffer.add(
            np.full(2, v), np.full(1, v), float(v), np.full(2, v + 0.5), v % 2 == 0, v % 3 == 0
        )


def test_buffer_wraps_around_overwriting_the_oldest():
    buffer = ReplayBuffer(5, obs_dim=2, action_dim=1)
    _fill(buffer, range(7))
    assert len(buffer) == 5
    np.testing.assert_array_equal(buffer.reward, [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.next_obs[:, 0], [5.5, 6.5, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(buffer.terminated, [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(buffer.truncated, [0, 1, 0, 1, 0])


def test_buffer_samples_many_batches_of_stored_transitions_only():
    buffer = ReplayBuffer(100, obs_dim=2, action_dim=1)
    _fill(buffer, range(3))
    batch = buffer.sample(np.random.default_rng(0), batch_size=16, num_batches=4)
    assert batch.obs.shape == (4, 16, 2) and batch.action.shape == (4, 16, 1)
    assert batch.reward.shape == (4, 16) and batch.terminated.dtype == np.float32
    assert set(np.unique(batch.reward)) <= {0.0, 1.0, 2.0}
    # Each row's fields come from the same transition.
    np.testing.assert_array_equal(batch.obs[..., 0], batch.reward)
    np.testing.assert_array_equal(batch.next_obs[..., 0], batch.reward + 0.5)
