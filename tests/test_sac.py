"""SAC's losses on hand-computed cases: the soft Bellman target (entropy term, min over the
target critics), the critic regression, the policy objective and the temperature objective."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agent_helpers import tiny_agent
from diffmaxent.agents import sac
from diffmaxent.agents.common import init_actor_critic_state, temperature_loss
from diffmaxent.nn import EnsembleCritic, GaussianActor
from diffmaxent.types import Batch

OBS_DIM, ACTION_DIM = 3, 1
ACTOR = GaussianActor((8,), ACTION_DIM)
CRITIC = EnsembleCritic((4,))


def constant_critics(*values: float) -> dict:
    """Parameters of the two-critic ensemble with ``Q_j(s, a) = values[j]`` for every pair:
    zero weights, so only the output bias is left."""
    params = CRITIC.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACTION_DIM)))
    params = jax.tree_util.tree_map(jnp.zeros_like, params)
    params["params"]["VmapQNetwork_0"]["MLP_0"]["Dense_0"]["bias"] = jnp.array(values)[:, None]
    return params


def state_with(online: dict, target: dict, temperature: float):
    actor_params = ACTOR.init(jax.random.PRNGKey(1), jnp.zeros((1, OBS_DIM)))
    state = init_actor_critic_state(
        actor_params,
        online,
        jnp.log(jnp.float32(temperature)),
        optax.sgd(0.1),
        optax.sgd(0.1),
        optax.sgd(0.1),
    )
    return state.replace(target_critic_params=target)


def batch_of(reward, terminated) -> Batch:
    size = len(reward)
    obs = jax.random.normal(jax.random.PRNGKey(2), (size, OBS_DIM))
    return Batch(
        obs=obs,
        action=jnp.zeros((size, ACTION_DIM)),
        reward=jnp.asarray(reward, jnp.float32),
        next_obs=obs + 1.0,
        terminated=jnp.asarray(terminated, jnp.float32),
        truncated=jnp.zeros(size),
    )


# --- the soft Bellman target ---------------------------------------------------------------------


def test_soft_target_subtracts_alpha_log_pi_from_the_smaller_target_q():
    next_q = jnp.array([[2.0, 7.0, -3.0], [5.0, 4.0, -1.0]])  # min over critics: 2, 4, -3
    target = sac.soft_td_target(
        reward=jnp.array([1.0, 0.5, -1.0]),
        terminated=jnp.array([0.0, 1.0, 0.0]),
        next_q=next_q,
        next_log_prob=jnp.array([-1.0, 2.0, 0.5]),
        temperature=jnp.float32(0.5),
        gamma=0.9,
    )
    # 1 + 0.9 (2 + 0.5 * 1); a terminal transition keeps its reward; -1 + 0.9 (-3 - 0.5 * 0.5)
    np.testing.assert_allclose(target, [3.25, 0.5, -3.925], rtol=1e-6)


def test_critic_loss_is_half_the_summed_mean_squared_errors_and_leaves_the_target_alone():
    q = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.array([1.0, 1.0])
    # 0.5 * (mean(0, 1) + mean(4, 9))
    assert float(sac.critic_regression_loss(q, target)) == pytest.approx(3.5)
    grad_q, grad_target = jax.grad(sac.critic_regression_loss, argnums=(0, 1))(q, target)
    np.testing.assert_allclose(grad_q, (q - target) / 2)
    np.testing.assert_array_equal(grad_target, 0.0)


def test_critic_loss_regresses_the_online_critics_on_the_target_critics_soft_value():
    """Online critics Q = (1, 3), target critics Q' = (2, 5): the target is
    r + 0.9 (1 - done) (2 - 0.5 log pi(a'|s')) with a' drawn as the loss draws it."""
    state = state_with(constant_critics(1.0, 3.0), constant_critics(2.0, 5.0), temperature=0.5)
    batch = batch_of(reward=[1.0, -2.0, 0.5, 0.0], terminated=[0.0, 0.0, 1.0, 0.0])
    key = jax.random.PRNGKey(3)
    loss, metrics = sac.critic_loss(ACTOR, CRITIC, 0.9, state.critic_params, state, batch, key)

    _, next_log_prob = sac.sample_action(ACTOR, state.actor_params, batch.next_obs, key)
    target = batch.reward + 0.9 * (1.0 - batch.terminated) * (2.0 - 0.5 * next_log_prob)
    expected = 0.5 * (jnp.mean((1.0 - target) ** 2) + jnp.mean((3.0 - target) ** 2))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["q_mean"]) == pytest.approx(2.0)


# --- the policy objective ------------------------------------------------------------------------


def test_policy_loss_is_alpha_log_pi_minus_q_and_its_gradient_raises_q_and_entropy():
    q = jnp.array([1.0, 0.0])
    log_prob = jnp.array([-1.0, 0.5])
    log_temperature = jnp.log(jnp.float32(2.0))
    # mean(2 * -1 - 1, 2 * 0.5 - 0)
    assert float(sac.soft_policy_loss(q, log_prob, log_temperature)) == pytest.approx(-1.0)
    grad_q, grad_log_prob = jax.grad(sac.soft_policy_loss, argnums=(0, 1))(
        q, log_prob, log_temperature
    )
    # Descent raises Q (dL/dQ < 0) and lowers log pi (dL/dlog pi = alpha / B > 0).
    np.testing.assert_allclose(grad_q, [-0.5, -0.5])
    np.testing.assert_allclose(grad_log_prob, [1.0, 1.0])


def test_actor_loss_takes_the_smaller_critic_and_returns_the_entropy_estimate():
    state = state_with(constant_critics(1.0, 3.0), constant_critics(0.0, 0.0), temperature=0.5)
    obs = jax.random.normal(jax.random.PRNGKey(4), (6, OBS_DIM))
    key = jax.random.PRNGKey(5)
    loss, entropy = sac.actor_loss(
        ACTOR, CRITIC, state.actor_params, state.critic_params, state.log_temperature, obs, key
    )
    _, log_prob = sac.sample_action(ACTOR, state.actor_params, obs, key)
    assert float(loss) == pytest.approx(float(jnp.mean(0.5 * log_prob) - 1.0), rel=1e-5)
    np.testing.assert_allclose(entropy, -log_prob)


# --- the temperature -----------------------------------------------------------------------------


def test_temperature_loss_is_log_alpha_times_the_entropy_surplus():
    log_temperature = jnp.log(jnp.float32(0.5))
    entropy = jnp.array([1.0, 3.0])  # mean 2, target -1: a surplus of 3 nats
    value, grad = jax.value_and_grad(temperature_loss)(log_temperature, entropy, -1.0)
    assert float(value) == pytest.approx(3.0 * math.log(0.5))
    assert float(grad) == pytest.approx(3.0)


@pytest.mark.parametrize("target_entropy,direction", [(-50.0, -1), (50.0, 1)])
def test_sac_update_lowers_alpha_above_the_target_entropy_and_raises_it_below(
    target_entropy, direction
):
    agent, buffer, _ = tiny_agent(
        "sac",
        {
            "actor_hidden_dims": "8",
            "critic_hidden_dims": "8",
            "temperature": "auto",
            "target_entropy": target_entropy,
        },
    )
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 16, 2)
    _, metrics = agent.update(state, batch, jax.random.PRNGKey(1))
    # init_temperature is 1; two Adam steps of 3e-4 each in log space.
    assert np.sign(float(metrics["temperature"]) - 1.0) == direction
