"""CrossQ's actor loss: its sign (descent raises Q and lowers log pi) and the critic in
evaluation mode inside it (the running BatchRenorm statistics, not the batch's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent_helpers import tiny_agent
from diffmaxent.agents import crossq
from diffmaxent.agents.sac import sample_action
from diffmaxent.critics import CrossQCritic
from diffmaxent.nn import GaussianActor

OBS_DIM, ACTION_DIM = 3, 1
ACTOR = GaussianActor((8,), ACTION_DIM)
ACTOR_PARAMS = ACTOR.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS_DIM)))
OBS = jax.random.normal(jax.random.PRNGKey(1), (32, OBS_DIM))
KEY = jax.random.PRNGKey(2)


def linear_critic(slopes, offsets, action_mean=0.0, action_var=1.0, q_reduce="mean"):
    """A two-critic scalar CrossQ critic with no hidden layer whose evaluation-mode values are
    ``Q_j(s, a) = slopes[j] (a - action_mean) / sqrt(action_var + 1e-3) + offsets[j]``: the
    input BatchRenorm's running statistics of the action are ``action_mean``, ``action_var``
    and the output layer reads the action alone. ``(critic, params, batch_stats)``."""
    critic = CrossQCritic(OBS_DIM, ACTION_DIM, hidden_dims=(), head="scalar", q_reduce=q_reduce)
    params, batch_stats = critic.init(jax.random.PRNGKey(3))
    kernel = jnp.zeros_like(params["critics"]["Dense_0"]["kernel"])
    params["critics"]["Dense_0"]["kernel"] = kernel.at[:, OBS_DIM, 0].set(jnp.array(slopes))
    params["critics"]["Dense_0"]["bias"] = jnp.array(offsets, jnp.float32)[:, None]
    stats = batch_stats["critics"]["BatchRenorm_0"]
    stats["mean"] = stats["mean"].at[:, OBS_DIM].set(action_mean)
    stats["var"] = stats["var"].at[:, OBS_DIM].set(action_var)
    return critic, params, batch_stats


def loss_and_log_prob(critic, critic_params, batch_stats, actor_params, log_temperature):
    loss, entropy = crossq.actor_loss(
        ACTOR, critic, actor_params, critic_params, batch_stats, log_temperature, OBS, KEY
    )
    return loss, -entropy


def descend(critic, critic_params, batch_stats, log_temperature, learning_rate=0.05):
    """Actor parameters after one gradient-descent step on the actor loss."""
    grads, _ = jax.grad(crossq.actor_loss, argnums=2, has_aux=True)(
        ACTOR, critic, ACTOR_PARAMS, critic_params, batch_stats, log_temperature, OBS, KEY
    )
    return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, ACTOR_PARAMS, grads)


def mean_q(critic, critic_params, batch_stats, actor_params) -> float:
    action, _ = sample_action(ACTOR, actor_params, OBS, KEY)
    values = critic.q_values(critic_params, batch_stats, OBS, action)
    return float(jnp.mean(critic.reduce(values)))


# --- sign ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [2.0, -2.0])
def test_a_descent_step_on_the_actor_loss_raises_q(slope):
    """Q rises with the action for slope > 0 and falls for slope < 0; at a negligible
    temperature a step must move the actions towards the higher Q either way."""
    critic, params, stats = linear_critic([slope, slope], [0.0, 0.0])
    log_temperature = jnp.log(jnp.float32(1e-4))
    after = descend(critic, params, stats, log_temperature)
    assert mean_q(critic, params, stats, after) > mean_q(critic, params, stats, ACTOR_PARAMS)


def test_a_descent_step_on_the_actor_loss_lowers_log_pi_where_q_is_flat():
    critic, params, stats = linear_critic([0.0, 0.0], [1.0, 1.0])
    log_temperature = jnp.log(jnp.float32(1.0))
    after = descend(critic, params, stats, log_temperature)
    _, log_prob_before = loss_and_log_prob(critic, params, stats, ACTOR_PARAMS, log_temperature)
    _, log_prob_after = loss_and_log_prob(critic, params, stats, after, log_temperature)
    assert float(jnp.mean(log_prob_after)) < float(jnp.mean(log_prob_before))


# --- the critic in evaluation mode ---------------------------------------------------------------


@pytest.mark.parametrize("q_reduce", ["mean", "min"])
def test_actor_loss_evaluates_the_critics_with_their_running_statistics(q_reduce):
    """Running action mean 0.3 and variance 0.25, far from the batch's own (the policy's
    actions are near 0 with a std of about 0.2): the loss is the closed form with the running
    statistics, which the batch statistics would not give. (Training mode would also need the
    statistics to be mutable: flax refuses to update an immutable collection.)"""
    slopes, offsets = np.array([1.0, 3.0]), np.array([0.5, -0.5])
    critic, params, stats = linear_critic(slopes, offsets, 0.3, 0.25, q_reduce)
    log_temperature = jnp.log(jnp.float32(0.2))
    loss, log_prob = loss_and_log_prob(critic, params, stats, ACTOR_PARAMS, log_temperature)

    action = np.asarray(sample_action(ACTOR, ACTOR_PARAMS, OBS, KEY)[0])[:, 0]
    per_critic = slopes[:, None] * (action - 0.3) / np.sqrt(0.25 + 1e-3) + offsets[:, None]
    q = per_critic.mean(0) if q_reduce == "mean" else per_critic.min(0)
    expected = np.mean(0.2 * np.asarray(log_prob) - q)
    assert float(loss) == pytest.approx(expected, rel=1e-5)

    # With the batch's statistics the same pairs would score otherwise.
    batch_normalised = (action - action.mean()) / np.sqrt(action.var() + 1e-3)
    batch_q = slopes[:, None] * batch_normalised + offsets[:, None]
    batch_q = batch_q.mean(0) if q_reduce == "mean" else batch_q.min(0)
    assert abs(np.mean(0.2 * np.asarray(log_prob) - batch_q) - expected) > 0.1


def test_the_running_statistics_count_one_step_per_critic_step_only():
    """With an actor step after every critic step, two gradient steps move each BatchRenorm
    layer's statistics twice: the critic's joint batch moves them, the actor's loss does not."""
    agent, buffer, _ = tiny_agent(
        "crossq",
        {"actor_hidden_dims": "8", "critic_hidden_dims": "8", "num_atoms": 11, "policy_delay": 1},
    )
    state = agent.init(jax.random.PRNGKey(0))
    state, _ = agent.update(state, buffer.sample(np.random.default_rng(0), 16, 2), KEY)
    steps = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.critic_batch_stats)
        if path[-1].key == "steps"
    ]
    assert len(steps) == 2  # the input layer's and the hidden layer's, per critic
    for counts in steps:
        np.testing.assert_array_equal(counts, [2, 2])
