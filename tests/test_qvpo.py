"""QVPO: the Q-weight transformation, best-of-N selection, the critic target, the direction of the
Q-weighted denoising loss and the entropy regulariser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agent_helpers import tiny_agent
from diffmaxent import diffusion
from diffmaxent.agents.qvpo import (
    QVPOConfig,
    entropy_weight_at,
    q_weights,
    weighted_denoising_loss,
    with_entropy_rows,
)
from diffmaxent.diffusion import NoiseNet
from diffmaxent.nn import EnsembleCritic
from diffmaxent.types import Batch

TINY = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "16,16",
    "num_train_samples": 5,
    "num_diffusion_steps": 3,
    "num_entropy_samples": 2,
    "batch_size": 16,
    "gamma": 0.9,
}
# The candidates every sampler call returns (in this order, per state) when sampling is replaced.
CANDIDATES = np.array([-0.9, -0.2, 0.25, 0.6, 0.9])


# --- the Q-weight transformation ------------------------------------------------------------------


def test_qadv_weight_is_the_advantage_over_the_mean_of_the_samples_and_zero_below_it():
    q = jnp.array([[1.0, 2.0, 3.0, 6.0], [-5.0, -1.0, -3.0, -7.0]])  # means 3 and -4
    indices, weights = q_weights(q, num_chosen=4, transform="qadv")
    np.testing.assert_array_equal(indices, [[3, 2, 1, 0], [1, 2, 0, 3]])
    np.testing.assert_allclose(weights, [[3.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    best, best_weight = q_weights(q, num_chosen=1, transform="qadv")
    np.testing.assert_array_equal(best, [[3], [1]])
    np.testing.assert_allclose(best_weight, [[3.0], [3.0]])


def test_qcut_weight_is_q_floored_at_the_cut():
    q = jnp.array([[-40.0, 0.5, 2.5, 7.0]])
    _, weights = q_weights(q, num_chosen=4, transform="qcut", cut=1.0)
    np.testing.assert_allclose(weights, [[7.0, 2.5, 1.0, 1.0]])


@pytest.mark.parametrize("transform", ["qadv", "qcut"])
def test_weights_are_non_negative_for_any_q(transform):
    q = 300.0 * jax.random.normal(jax.random.PRNGKey(0), (64, 16)) - 500.0
    _, weights = q_weights(q, num_chosen=8, transform=transform, cut=0.0)
    assert float(weights.min()) >= 0.0


# --- best-of-N selection and the critic target, with critics and samples replaced by hand ---------


def hand_critic_apply(self, params, obs, action):
    """Two critics ``Q_j(s, a) = -|a - c_j|`` with the centres ``c = params["centres"]``:
    ``[2, *action.shape[:-1]]``."""
    a = action[..., 0]
    return jnp.stack([-jnp.abs(a - params["centres"][0]), -jnp.abs(a - params["centres"][1])])


def agent_with_hand_critics(monkeypatch, overrides=None):
    """Critics centred at 0.6 and 0 (online) and at -0.9 and -0.5 (target). Of CANDIDATES the
    online min picks 0.25 (the first critic alone 0.6, the second -0.2, the max 0.6); the target
    min picks -0.9. Every sampler call returns CANDIDATES and records its shape."""
    shapes = []

    def fake_sample(eps_fn, key, shape, **_):
        shapes.append(shape)
        candidates = np.resize(CANDIDATES, shape[-2])  # repeated when more are asked for
        return jnp.broadcast_to(jnp.asarray(candidates)[None, :, None], shape)

    monkeypatch.setattr(diffusion, "sample", fake_sample)
    monkeypatch.setattr(EnsembleCritic, "apply", hand_critic_apply)
    values = {
        **TINY,
        "eval_candidates": 5,
        "behaviour_candidates": 5,
        "target_candidates": 5,
        **(overrides or {}),
    }
    agent, _, _ = tiny_agent("qvpo", values)
    state = agent.init(jax.random.PRNGKey(0)).replace(
        critic_params={"centres": jnp.array([0.6, 0.0])},
        target_critic_params={"centres": jnp.array([-0.9, -0.5])},
    )
    return agent, state, shapes


@pytest.mark.parametrize("deterministic", [True, False])
def test_act_picks_the_candidate_with_the_highest_min_q_of_the_online_critics(
    monkeypatch, deterministic
):
    agent, state, shapes = agent_with_hand_critics(monkeypatch)
    obs = jnp.zeros((3, 3))
    action = agent.act(state, obs, jax.random.PRNGKey(1), deterministic)
    np.testing.assert_allclose(action, np.full((3, 1), 0.25))
    assert shapes == [(3, 5, 1)]


def test_act_draws_eval_candidates_for_deterministic_and_behaviour_candidates_otherwise(
    monkeypatch,
):
    agent, state, shapes = agent_with_hand_critics(
        monkeypatch, {"eval_candidates": 32, "behaviour_candidates": 4}
    )
    agent.act(state, jnp.zeros((2, 3)), jax.random.PRNGKey(1), True)
    agent.act(state, jnp.zeros((2, 3)), jax.random.PRNGKey(1), False)
    assert shapes == [(2, 32, 1), (2, 4, 1)]


def test_critic_target_is_reward_plus_discounted_min_target_q_at_the_target_best_candidate(
    monkeypatch,
):
    """Target critics' min picks a' = -0.9, where min_j Q'_j = -0.4 and the target is
    r + 0.9 (1 - done)(-0.4); a truncation still bootstraps. The online critics at the replay
    actions give Q_1 = -|a - 0.6|, Q_2 = -|a|; the loss is sum_j mean (Q_j - target)^2."""
    agent, state, _ = agent_with_hand_critics(monkeypatch)
    reward = np.array([1.0, -2.0, 0.5])
    terminated = np.array([0.0, 0.0, 1.0])
    action = np.array([0.1, -0.7, 0.9])
    batch = Batch(
        obs=jnp.zeros((3, 3)),
        action=jnp.asarray(action)[:, None],
        reward=jnp.asarray(reward),
        next_obs=jnp.ones((3, 3)),
        terminated=jnp.asarray(terminated),
        truncated=jnp.ones(3),
    )
    _, metrics = agent.phases["critic step incl. target sampling"](
        state, batch, jax.random.PRNGKey(2)
    )
    target = reward + 0.9 * (1.0 - terminated) * -0.4
    q = np.stack([-np.abs(action - 0.6), -np.abs(action)])
    expected = np.sum(np.mean((q - target) ** 2, axis=-1))
    np.testing.assert_allclose(metrics["critic_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("constant_q", [True, False])
def test_policy_gradient_is_zero_exactly_when_no_sample_beats_the_mean_q(monkeypatch, constant_q):
    """When every drawn action has the same Q the qadv weights are zero, and so are the entropy
    rows' weights: the policy's gradient is exactly zero. With the hand critics (the drawn
    CANDIDATES differ in Q) it is not."""
    agent, state, _ = agent_with_hand_critics(monkeypatch)
    if constant_q:
        monkeypatch.setattr(
            EnsembleCritic,
            "apply",
            lambda self, params, obs, action: jnp.zeros((2, *action.shape[:-1])),
        )
    batch = Batch(
        obs=jax.random.normal(jax.random.PRNGKey(3), (8, 3)),
        action=jnp.zeros((8, 1)),
        reward=jnp.zeros(8),
        next_obs=jnp.zeros((8, 3)),
        terminated=jnp.zeros(8),
        truncated=jnp.zeros(8),
    )
    grads = agent.phases["Q-weighted actor step incl. sampling"](
        state, batch, jax.random.PRNGKey(4)
    )
    norm = float(optax.global_norm(grads))
    assert (norm == 0.0) if constant_q else (norm > 0.0)


# --- the weighted denoising loss and the entropy term on a small noise network --------------------


def train_policy(actions, weights, steps=300):
    """Fit a small noise network for one state (``obs = 0``) by Adam on the weighted denoising
    loss of rows ``actions [K]`` with ``weights [K]`` (64 copies of the state); returns 512 DDPM
    samples of the result, clipped to [-1, 1]."""
    net = NoiseNet(1, (32, 32))
    obs = jnp.zeros((64, 3))
    rows = jnp.broadcast_to(jnp.asarray(actions, jnp.float32)[None, :, None], (64, len(actions), 1))
    row_weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (64, len(weights)))
    params = net.init(jax.random.PRNGKey(0), obs[:1], jnp.zeros((1, 1)), jnp.zeros((1,)))
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(carry, key):
        params, opt_state = carry
        grads = jax.grad(weighted_denoising_loss, argnums=1)(
            net, params, obs, rows, row_weights, key
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(jax.random.PRNGKey(1), steps)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
    samples = diffusion.sample(
        lambda x, lam: net.apply(params, jnp.zeros((512, 3)), x, lam),
        jax.random.PRNGKey(2),
        (512, 1),
        sampler="ddpm",
        num_steps=10,
    )
    return np.clip(np.asarray(samples[:, 0]), -1.0, 1.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_weighted_loss_moves_the_policy_towards_the_heavier_weighted_action(sign):
    samples = train_policy([0.7 * sign, -0.7 * sign], [1.0, 0.05])
    assert sign * samples.mean() > 0.4


def test_entropy_rows_are_uniform_in_the_box_and_carry_omega_times_their_states_weight():
    chosen = jnp.array([[[0.5, -0.5]], [[0.1, 0.2]]])  # [B=2, k=1, A=2]
    weights = jnp.array([[2.0], [0.0]])
    actions, row_weights = with_entropy_rows(chosen, weights, 0.02, 4000, jax.random.PRNGKey(0))
    assert actions.shape == (2, 4001, 2) and row_weights.shape == (2, 4001)
    np.testing.assert_array_equal(actions[:, 0], chosen[:, 0])
    np.testing.assert_allclose(row_weights[:, 0], [2.0, 0.0])
    np.testing.assert_allclose(row_weights[0, 1:], 0.04)  # omega times the state's weight
    np.testing.assert_array_equal(row_weights[1, 1:], 0.0)  # none where the state weighs nothing
    uniform = np.asarray(actions[:, 1:])
    assert uniform.min() >= -1.0 and uniform.max() <= 1.0
    np.testing.assert_allclose(uniform.mean(), 0.0, atol=0.02)
    np.testing.assert_allclose(uniform.std(), 1.0 / np.sqrt(3.0), atol=0.02)


def test_entropy_term_keeps_the_policy_wider_than_the_weighted_loss_alone():
    """One kept action at 0.5: alone, the policy collapses onto it; with 10 rows spread over the
    box at omega = 0.3 it keeps far more spread."""
    alone = train_policy([0.5], [1.0])
    spread = list(np.linspace(-1.0, 1.0, 10))  # stand-ins for the uniform draws
    regularised = train_policy([0.5, *spread], [1.0] + [0.3] * 10)
    assert alone.std() < 0.1
    assert regularised.std() > 2.0 * alone.std() + 0.1


def test_entropy_weight_decays_linearly_to_its_floor():
    config = QVPOConfig(entropy_weight_decay_steps=1000)
    at = [float(entropy_weight_at(config, jnp.asarray(step))) for step in (0, 500, 900, 2000)]
    np.testing.assert_allclose(at, [0.02, 0.01, 0.002, 0.002], rtol=1e-6)
    constant = QVPOConfig(entropy_weight_decay_steps=0)
    assert float(entropy_weight_at(constant, jnp.asarray(10**6))) == pytest.approx(0.02)
