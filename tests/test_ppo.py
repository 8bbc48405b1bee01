"""PPO's loss on hand-computed cases: the clipped surrogate for ratios inside and outside the
clip range with positive and negative advantages, the value regression and the entropy bonus."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmaxent import resolve_config
from diffmaxent.agents.ppo import gaussian_entropy, ppo_loss

CLIP = 0.2
# One sample per case of the surrogate min(r A, clip(r, 0.8, 1.2) A):
RATIO = np.array([1.1, 1.5, 0.5, 1.5, 0.5, 0.9])
ADVANTAGE = np.array([2.0, 2.0, 2.0, -1.0, -1.0, -1.0])
# inside the clip (2.2); above it, A > 0: capped at 1.2 A (2.4); below it, A > 0: the
# unclipped, smaller r A (1.0); above it, A < 0: the unclipped r A (-1.5); below it, A < 0:
# capped at 0.8 A (-0.8); inside the clip (-0.9).
SURROGATE = np.array([2.2, 2.4, 1.0, -1.5, -0.8, -0.9])
CLIPPED = np.array([False, True, False, False, True, False])
OLD_LOG_PROB = np.array([-1.0, -0.5, 0.0, -2.0, 0.3, -1.2])
LOG_STD = np.array([-0.5, 0.2])


def loss_of(log_prob, log_std=LOG_STD, value=None, returns=None, entropy_coef=0.0):
    zeros = jnp.zeros(len(RATIO))
    return ppo_loss(
        jnp.asarray(log_prob, jnp.float32),
        jnp.asarray(OLD_LOG_PROB, jnp.float32),
        jnp.asarray(ADVANTAGE, jnp.float32),
        jnp.asarray(log_std, jnp.float32),
        zeros if value is None else jnp.asarray(value, jnp.float32),
        zeros if returns is None else jnp.asarray(returns, jnp.float32),
        clip=CLIP,
        entropy_coef=entropy_coef,
    )


LOG_PROB = np.log(RATIO) + OLD_LOG_PROB


# --- clipped surrogate ---------------------------------------------------------------------------


def test_surrogate_takes_the_pessimistic_side_of_the_clip_for_each_sign_of_advantage():
    loss, metrics = loss_of(LOG_PROB)
    assert float(metrics["policy_loss"]) == pytest.approx(-SURROGATE.mean(), rel=1e-5)
    assert float(loss) == pytest.approx(-SURROGATE.mean(), rel=1e-5)  # no value, no bonus
    assert float(metrics["clip_fraction"]) == pytest.approx(4 / 6)
    expected_kl = np.mean((RATIO - 1) - np.log(RATIO))
    assert float(metrics["approx_kl"]) == pytest.approx(expected_kl, rel=1e-4)


def test_surrogate_gradient_vanishes_where_the_clip_binds_and_is_minus_r_a_over_b_elsewhere():
    grad = jax.grad(lambda lp: loss_of(lp)[0])(jnp.asarray(LOG_PROB, jnp.float32))
    # d(-r A / B)/d log pi = -r A / B where unclipped; 0 where the clipped term is the min.
    expected = np.where(CLIPPED, 0.0, -RATIO * ADVANTAGE / len(RATIO))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    # Descent raises log pi where A > 0 and lowers it where A < 0, except where clipped.
    assert np.all(np.sign(-np.asarray(grad))[~CLIPPED] == np.sign(ADVANTAGE)[~CLIPPED])


# --- value loss and entropy bonus ----------------------------------------------------------------


def test_value_loss_is_half_the_mean_squared_error():
    value = np.array([1.0, 2.0, 0.0, 0.0, -1.0, 3.0])
    returns = np.array([0.0, 4.0, 0.0, 1.0, -1.0, 3.0])
    loss, metrics = loss_of(np.asarray(OLD_LOG_PROB), value=value, returns=returns)
    # 0.5 * mean(1, 4, 0, 1, 0, 0); at r = 1 the surrogate is -mean(A) = -0.5.
    assert float(metrics["value_loss"]) == pytest.approx(0.5)
    assert float(loss) == pytest.approx(-0.5 + 0.5, abs=1e-6)
    grad = jax.grad(lambda v: loss_of(OLD_LOG_PROB, value=v, returns=returns)[0])(
        jnp.asarray(value, jnp.float32)
    )
    np.testing.assert_allclose(grad, (value - returns) / len(value))


def test_entropy_is_the_gaussians_and_its_bonus_raises_the_std():
    expected = np.sum(LOG_STD) + len(LOG_STD) * 0.5 * math.log(2 * math.pi * math.e)
    assert float(gaussian_entropy(jnp.asarray(LOG_STD))) == pytest.approx(expected, rel=1e-6)

    with_bonus, metrics = loss_of(LOG_PROB, entropy_coef=0.01)
    without_bonus, _ = loss_of(LOG_PROB)
    assert float(metrics["entropy"]) == pytest.approx(expected, rel=1e-6)
    assert float(with_bonus) == pytest.approx(float(without_bonus) - 0.01 * expected, rel=1e-5)
    grad = jax.grad(lambda s: loss_of(LOG_PROB, log_std=s, entropy_coef=0.01)[0])(
        jnp.asarray(LOG_STD, jnp.float32)
    )
    np.testing.assert_allclose(grad, [-0.01, -0.01], rtol=1e-5)  # descent widens the policy


@pytest.mark.filterwarnings("ignore::diffmaxent.errors.PresetSuiteWarning")
def test_paper_preset_evaluates_sampled_actions_as_the_da_mdp_baseline_does():
    """The DA-MDP PPO baseline evaluates a Gaussian sample (docs/evaluation.md); the cpu preset
    keeps the mean, which its learning-test budget was measured with."""
    assert resolve_config("ppo", "dmc:cheetah-run", preset="paper").loop.eval_deterministic is False
    assert resolve_config("ppo", "Pendulum-v1", preset="cpu").loop.eval_deterministic is True
