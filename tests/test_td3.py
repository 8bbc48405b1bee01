"""TD3: target policy smoothing (clipped noise), the clipped double-Q target on the target
networks, the first-critic actor objective, the actor and target updates every ``policy_delay``
critic steps, behaviour noise, presets.

The critics are replaced by closed-form linear ones, ``Q_j(s, a) = offset_j + slope_j a``, and the
actor by one whose parameters are zero (``pi(s) = tanh(0) = 0``), so every target is known by
hand."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmaxent import resolve_config
from diffmaxent.agents import td3
from diffmaxent.agents.td3 import OFFICIAL_VALUES, TD3Config
from diffmaxent.envs import make_env
from diffmaxent.nn import MLP
from diffmaxent.types import Batch

OBS_DIM, ACTION_DIM = 3, 1
ACTOR = MLP((8,), ACTION_DIM)


class LinearCritic(nn.Module):
    """``Q_j(s, a) = offset_j + slope_j a_0``: ``[J, B]``."""

    num_critics: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        offset = self.param("offset", nn.initializers.zeros, (self.num_critics,))
        slope = self.param("slope", nn.initializers.ones, (self.num_critics,))
        return offset[:, None] + slope[:, None] * action[None, :, 0]


CRITIC = LinearCritic()


def linear_params(offsets, slopes) -> dict:
    return {
        "params": {
            "offset": jnp.asarray(offsets, jnp.float32),
            "slope": jnp.asarray(slopes, jnp.float32),
        }
    }


def actor_params(scale: float) -> dict:
    """The actor's parameters times ``scale``: zero gives ``pi(s) = 0`` for every state."""
    params = ACTOR.init(jax.random.PRNGKey(1), jnp.zeros((1, OBS_DIM)))
    return jax.tree_util.tree_map(lambda x: scale * x, params)


def state_with(*, actor, target_actor, critic, target_critic) -> td3.TD3State:
    return td3.TD3State(
        actor_params=actor,
        target_actor_params=target_actor,
        critic_params=critic,
        target_critic_params=target_critic,
        actor_opt_state=(),
        critic_opt_state=(),
        step=jnp.zeros((), jnp.int32),
    )


def hand_batch(size: int, reward=None, terminated=None) -> Batch:
    obs = jax.random.normal(jax.random.PRNGKey(2), (size, OBS_DIM))
    return Batch(
        obs=obs,
        action=jnp.zeros((size, ACTION_DIM)),
        reward=jnp.zeros(size) if reward is None else jnp.asarray(reward, jnp.float32),
        next_obs=obs + 1.0,
        terminated=jnp.zeros(size) if terminated is None else jnp.asarray(terminated, jnp.float32),
        truncated=jnp.ones(size),  # a time limit must not stop the bootstrap
    )


# --- target policy smoothing (eq. 15) ------------------------------------------------------------


def test_target_smoothing_noise_is_clipped_to_c():
    """At std 1 and c = 0.5, 62% of the draws exceed c: all of them must end at +-c exactly."""
    target_action = jnp.zeros((20_000, ACTION_DIM))
    smoothed = np.asarray(td3.smoothed_target_action(target_action, jax.random.key(0), 1.0, 0.5))
    assert np.abs(smoothed).max() == pytest.approx(0.5)
    assert 0.58 < np.mean(np.abs(smoothed) == 0.5) < 0.66  # P(|N(0, 1)| > 0.5) = 0.617
    inside = smoothed[np.abs(smoothed) < 0.5]
    assert abs(inside.mean()) < 0.01 and inside.std() == pytest.approx(0.28, abs=0.01)


def test_smoothed_target_action_stays_in_the_box():
    target_action = jnp.full((20_000, ACTION_DIM), 0.9)
    smoothed = np.asarray(td3.smoothed_target_action(target_action, jax.random.key(1), 0.2, 0.5))
    assert smoothed.max() == 1.0 and smoothed.min() == pytest.approx(0.4)
    # a' + eps >= 1 when eps >= 0.1: P(N(0, 0.2^2) > 0.1) = 0.31.
    assert 0.28 < np.mean(smoothed == 1.0) < 0.34


def test_the_critic_target_sees_the_clipped_smoothing_noise():
    """pi'(s') = 0 and Q'_j = a: the target is gamma * min(clip(eps, -c, c)), so a noise of std 1
    reaches +-c in most rows and never beyond."""
    config = TD3Config(gamma=0.9, target_noise=1.0, target_noise_clip=0.5)
    state = state_with(
        actor=actor_params(1.0),
        target_actor=actor_params(0.0),
        critic=linear_params([0.0, 0.0], [1.0, 1.0]),
        target_critic=linear_params([0.0, 0.0], [1.0, 1.0]),
    )
    target = np.asarray(
        td3.clipped_double_q_target(
            ACTOR, CRITIC, config, state, hand_batch(4096), jax.random.key(3)
        )
    )
    assert np.abs(target).max() == pytest.approx(0.45)
    assert np.mean(np.isclose(np.abs(target), 0.45)) > 0.55


# --- the clipped double-Q target (eq. 10) and the critic loss ------------------------------------


@pytest.mark.parametrize("terminated", [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
def test_target_is_reward_plus_discounted_min_of_the_target_critics_at_the_target_action(
    terminated,
):
    """Without smoothing noise the target action is pi'(s') = 0 (the online actor would give
    another), so Q'_j(s', a') = offset'_j: the target is r + 0.9 (1 - terminated) min(2, -1)."""
    config = TD3Config(gamma=0.9, target_noise=0.0)
    state = state_with(
        actor=actor_params(5.0),
        target_actor=actor_params(0.0),
        critic=linear_params([7.0, 8.0], [1.0, 1.0]),
        target_critic=linear_params([2.0, -1.0], [3.0, -3.0]),
    )
    reward = np.array([1.0, -2.0, 0.5, 0.0])
    batch = hand_batch(4, reward, terminated)
    target = td3.clipped_double_q_target(ACTOR, CRITIC, config, state, batch, jax.random.key(0))
    expected = reward + 0.9 * (1.0 - np.array(terminated)) * -1.0
    np.testing.assert_allclose(target, expected, rtol=1e-6)

    loss, metrics = td3.critic_loss(
        ACTOR, CRITIC, config, state.critic_params, state, batch, jax.random.key(0)
    )
    # Online Q_j(s, 0) = 7 and 8: the sum over critics of each one's mean squared error.
    assert float(loss) == pytest.approx(
        np.mean((7.0 - expected) ** 2) + np.mean((8.0 - expected) ** 2), rel=1e-6
    )
    assert float(metrics["q_mean"]) == pytest.approx(7.5)


# --- the actor objective -------------------------------------------------------------------------


def test_actor_objective_is_minus_the_first_critic_at_the_policy_action():
    """Q_1 rises with a, Q_2 falls: descent on the objective must raise pi(s), as Q_1 asks."""
    critic = linear_params([1.0, 0.0], [2.0, -5.0])
    params = actor_params(1.0)
    obs = jax.random.normal(jax.random.PRNGKey(4), (64, OBS_DIM))
    action = td3.policy_action(ACTOR, params, obs)[:, 0]
    loss, grads = jax.value_and_grad(td3.actor_loss, argnums=2)(ACTOR, CRITIC, params, critic, obs)
    assert float(loss) == pytest.approx(-float(jnp.mean(1.0 + 2.0 * action)), rel=1e-5)
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)
    assert float(jnp.mean(td3.policy_action(ACTOR, stepped, obs))) > float(jnp.mean(action))


# --- the schedule: actor and targets every policy_delay critic steps -----------------------------


def _changed(before, after) -> bool:
    return any(
        bool(jnp.any(a != b))
        for a, b in zip(
            jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True
        )
    )


@pytest.mark.parametrize("policy_delay", [1, 2, 3])
def test_the_actor_and_the_targets_update_every_policy_delay_critic_steps(policy_delay):
    spec = make_env("Pendulum-v1", seed=0).env_spec
    config = TD3Config(actor_hidden_dims=(16,), critic_hidden_dims=(16,), policy_delay=policy_delay)
    agent = td3.make(config, spec)
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    updated = {"actor": [], "target actor": [], "critics": [], "target critics": []}
    for i in range(6):
        batch = hand_batch(32, rng.standard_normal(32))
        batches = jax.tree_util.tree_map(lambda x: x[None], batch)
        previous = state
        state, metrics = agent.update(state, batches, jax.random.key(i))
        updated["actor"].append(_changed(previous.actor_params, state.actor_params))
        updated["target actor"].append(
            _changed(previous.target_actor_params, state.target_actor_params)
        )
        updated["critics"].append(_changed(previous.critic_params, state.critic_params))
        updated["target critics"].append(
            _changed(previous.target_critic_params, state.target_critic_params)
        )
        assert np.isfinite(float(metrics["actor_loss"]))
    every_step = [True] * 6
    actor_steps = [(i + 1) % policy_delay == 0 for i in range(6)]
    assert updated == {
        "actor": actor_steps,
        "target actor": actor_steps,
        "critics": every_step,
        "target critics": actor_steps,
    }


# --- acting --------------------------------------------------------------------------------------


def test_evaluation_takes_the_policy_action_and_behaviour_adds_clipped_gaussian_noise():
    """pi(s) = 0.95 everywhere (output layer: zero weights, bias atanh 0.95): behaviour actions
    are clip(0.95 + N(0, 0.1^2), -1, 1), so P(a = 1) = P(N(0, 1) > 0.5) = 0.31 and the rest
    average 0.95 - 0.1 phi(0.5) / Phi(0.5) = 0.899."""
    spec = make_env("Pendulum-v1", seed=0).env_spec
    agent = td3.make(TD3Config(actor_hidden_dims=(8,), critic_hidden_dims=(8,)), spec)
    state = agent.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x, state.actor_params)
    output = params["params"]["Dense_1"]
    output["kernel"] = jnp.zeros_like(output["kernel"])
    output["bias"] = jnp.full_like(output["bias"], np.arctanh(0.95))
    state = state.replace(actor_params=params)
    obs = jax.random.normal(jax.random.PRNGKey(5), (20_000, OBS_DIM))
    np.testing.assert_allclose(agent.act(state, obs, jax.random.key(0), True), 0.95, rtol=1e-6)
    behaviour = np.asarray(agent.act(state, obs, jax.random.key(0), False))
    assert behaviour.max() == 1.0
    assert 0.29 < np.mean(behaviour == 1.0) < 0.33
    assert abs(behaviour[behaviour < 1.0].mean() - 0.899) < 0.003


# --- presets -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::diffmaxent.errors.PresetSuiteWarning")  # gym presets
def test_presets_paper_and_official():
    paper = resolve_config("td3", "Pendulum-v1", preset="paper")
    # The paper: 400-300, Adam 1e-3, batch 100, sigma 0.1, sigma~ 0.2, c 0.5, d 2, tau 0.005.
    assert paper.agent == TD3Config()
    assert paper.agent.actor_hidden_dims == paper.agent.critic_hidden_dims == (400, 300)
    assert (paper.agent.actor_lr, paper.agent.critic_lr) == (1e-3, 1e-3)
    assert (paper.agent.target_noise, paper.agent.target_noise_clip) == (0.2, 0.5)
    assert (paper.agent.policy_delay, paper.agent.exploration_noise) == (2, 0.1)
    assert (paper.loop.batch_size, paper.loop.eval_every) == (100, 5_000)
    assert resolve_config("td3", "paper/Ant-v3", preset="paper").loop.learning_starts == 10_000
    assert resolve_config("td3", "paper/Hopper-v3", preset="paper").loop.learning_starts == 1_000

    official = resolve_config("td3", "Pendulum-v1", preset="official")
    agent_fields = {f.name for f in dataclasses.fields(TD3Config)}
    for name, value in OFFICIAL_VALUES.items():
        part = official.agent if name in agent_fields else official.loop
        assert getattr(part, name) == value
    assert (official.loop.batch_size, official.loop.learning_starts) == (256, 25_000)
    assert official.agent == dataclasses.replace(
        TD3Config(),
        **{k: v for k, v in OFFICIAL_VALUES.items() if k in agent_fields},
    )
