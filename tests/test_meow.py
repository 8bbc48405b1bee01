"""MEow: the soft value the flow implies is the log-partition of its soft Q (integrated on a grid),
Q - V = alpha log pi, the clipped double value target, the loss's use of the target flow,
deterministic inference, the temperature, presets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from agent_helpers import tiny_agent
from diffmaxent import resolve_config
from diffmaxent.agents import meow
from diffmaxent.types import Batch

OBS_DIM = 3


def energy_based_flow(action_dim: int = 1, reward_shifting: bool = True) -> meow.EnergyBasedFlow:
    return meow.EnergyBasedFlow(
        action_dim,
        hidden_dims=(16, 16),
        num_coupling_pairs=2,
        log_std_min=-5.0,
        log_std_max=-0.3,
        layer_norm=True,
        dropout_rate=0.1,
        num_critics=2,
        reward_shifting=reward_shifting,
        shift_hidden_dims=(8, 8),
        state_net_init="zeros",
    )


def perturbed_params(model: meow.EnergyBasedFlow, seed: int = 0, scale: float = 0.3):
    """Every parameter moved by N(0, scale^2): at ``init`` the log-std and shift networks'
    kernels are zero, which would make sigma(s) and b_k(s) constants."""
    params = model.init(
        jax.random.PRNGKey(seed), jnp.zeros((1, OBS_DIM)), jnp.zeros((1, model.action_dim))
    )
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def states(count: int, seed: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (count, OBS_DIM))


def eval_q(model, params, obs, action, temperature):
    """``Q_k(s, a)`` without dropout: ``[K, B]``."""
    return temperature * model.apply(params, obs, action, False, method="q_over_temperature")


# --- the soft value is the log-partition function of the soft Q ----------------------------------


def test_soft_value_is_the_log_partition_of_the_soft_q_on_a_grid():
    """``V_k(s) = alpha log integral_{-1}^{1} exp(Q_k(s, a) / alpha) da`` for every shift k."""
    model = energy_based_flow()
    params = perturbed_params(model)
    temperature = 0.3
    grid = np.linspace(-1.0, 1.0, 40_001)[1:-1]
    obs = states(3)
    value = meow.soft_value(model, params, obs, temperature)
    assert value.shape == (2, 3)
    for i in range(3):
        q = eval_q(
            model,
            params,
            jnp.broadcast_to(obs[i], (grid.size, OBS_DIM)),
            grid[:, None],
            temperature,
        )
        for k in range(2):
            scaled = np.asarray(q[k], np.float64) / temperature
            peak = scaled.max()
            log_partition = peak + np.log(np.trapezoid(np.exp(scaled - peak), grid))
            np.testing.assert_allclose(value[k, i], temperature * log_partition, atol=2e-3)
    # the two shift networks give two different values (else the min in the target is idle)
    assert float(jnp.abs(value[0] - value[1]).min()) > 1e-3


def test_q_minus_v_is_alpha_log_pi_of_the_flows_own_samples():
    model = energy_based_flow(action_dim=2)
    params = perturbed_params(model, seed=3)
    temperature = 0.7
    obs = states(32, seed=4)
    action, log_prob = model.apply(params, obs, jax.random.PRNGKey(5), method="sample")
    inside = np.all(np.abs(np.asarray(action)) < 1 - 1e-3, axis=-1)
    q = eval_q(model, params, obs, action, temperature)
    value = meow.soft_value(model, params, obs, temperature)
    np.testing.assert_allclose(
        (q - value)[:, inside],
        temperature * np.broadcast_to(log_prob[inside], (2, inside.sum())),
        rtol=1e-4,
        atol=1e-3,
    )


def test_without_reward_shifting_the_critics_agree_outside_dropout():
    model = energy_based_flow(reward_shifting=False)
    params = perturbed_params(model)
    obs = states(5)
    q = eval_q(model, params, obs, jnp.zeros((5, 1)), 1.0)
    value = meow.soft_value(model, params, obs, 1.0)
    assert q.shape == value.shape == (2, 5)
    np.testing.assert_array_equal(q[0], q[1])
    np.testing.assert_array_equal(value[0], value[1])


# --- the soft Bellman target and loss ------------------------------------------------------------


def test_target_takes_the_smaller_shifted_value_and_stops_at_termination():
    target = meow.soft_bellman_target(
        reward=jnp.array([1.0, 0.5, -1.0]),
        terminated=jnp.array([0.0, 1.0, 0.0]),
        next_value=jnp.array([[2.0, 7.0, -3.0], [5.0, 4.0, -1.0]]),  # min: 2, 4, -3
        gamma=0.9,
    )
    np.testing.assert_allclose(target, [2.8, 0.5, -3.7], rtol=1e-6)


def batch_of(size: int, seed: int = 6) -> Batch:
    obs = states(size, seed)
    return Batch(
        obs=obs,
        action=jax.random.uniform(jax.random.PRNGKey(seed + 1), (size, 1), minval=-0.9, maxval=0.9),
        reward=jnp.linspace(-1.0, 1.0, size),
        next_obs=obs + 1.0,
        terminated=jnp.zeros(size),
        truncated=jnp.zeros(size),
    )


def test_loss_regresses_every_shifted_q_onto_the_target_flows_clipped_value():
    model = energy_based_flow()
    online, target_params = perturbed_params(model, seed=7), perturbed_params(model, seed=9)
    temperature, gamma = 0.4, 0.9
    state = meow.MEowState(
        critic_params=online,
        target_critic_params=target_params,
        log_temperature=jnp.log(jnp.float32(temperature)),
        critic_opt_state=(),
        temperature_opt_state=(),
        step=jnp.zeros((), jnp.int32),
    )
    batch = batch_of(16)
    key = jax.random.PRNGKey(11)
    loss, metrics = meow.soft_bellman_loss(model, gamma, online, state, batch, key)

    next_value = meow.soft_value(model, target_params, batch.next_obs, temperature)
    expected_target = batch.reward + gamma * next_value.min(axis=0)
    np.testing.assert_allclose(metrics["target_mean"], expected_target.mean(), rtol=1e-5)
    q = meow.soft_q(model, online, batch.obs, batch.action, temperature, key)
    expected = 0.5 * jnp.sum(jnp.mean((q - expected_target) ** 2, axis=-1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # the online flow's own value would give another target
    own_value = meow.soft_value(model, online, batch.next_obs, temperature).min(axis=0)
    assert abs(float((own_value - next_value.min(axis=0)).mean())) > 1e-2


def test_each_shift_gets_its_own_dropout_masks_in_the_loss():
    model = energy_based_flow()
    params = perturbed_params(model, seed=12)
    obs, action = states(8, seed=13), jnp.full((8, 1), 0.3)
    q = meow.soft_q(model, params, obs, action, 1.0, jax.random.PRNGKey(0))
    shifts = model.apply(params, obs, method="reward_shifts")
    action_terms = q - shifts  # [2, B]: the flow's part, under two draws of dropout masks
    assert float(jnp.abs(action_terms[0] - action_terms[1]).max()) > 1e-4
    without_dropout = eval_q(model, params, obs, action, 1.0) - shifts
    np.testing.assert_allclose(without_dropout[0], without_dropout[1], rtol=1e-6)


# --- acting, temperature, presets ----------------------------------------------------------------


def test_deterministic_action_is_the_flows_mode_and_ignores_the_key():
    agent, buffer, config = tiny_agent("meow", {"actor_hidden_dims": "16,16"})
    state = agent.init(jax.random.PRNGKey(0))
    obs = jnp.asarray(buffer.obs[:8])
    first = agent.act(state, obs, jax.random.PRNGKey(1), True)
    np.testing.assert_array_equal(first, agent.act(state, obs, jax.random.PRNGKey(2), True))
    model = config.agent.network(1)
    np.testing.assert_allclose(
        first, model.apply(state.critic_params, obs, method="mode"), rtol=1e-6
    )
    sampled = agent.act(state, obs, jax.random.PRNGKey(1), False)
    assert not np.allclose(sampled, agent.act(state, obs, jax.random.PRNGKey(2), False))
    assert np.all(np.abs(np.asarray(sampled)) <= 1.0)


def test_fixed_temperature_stays_and_auto_temperature_moves():
    for temperature, moves in ((0.2, False), ("auto", True)):
        agent, buffer, _ = tiny_agent(
            "meow", {"actor_hidden_dims": "16,16", "temperature": temperature, "batch_size": 32}
        )
        state = agent.init(jax.random.PRNGKey(0))
        before = float(jnp.exp(state.log_temperature))
        state, metrics = agent.update(
            state, buffer.sample(np.random.default_rng(0), 32, 3), jax.random.PRNGKey(1)
        )
        after = float(jnp.exp(state.log_temperature))
        assert (after != before) == moves
        assert np.isfinite(float(metrics["critic_loss"]))


def test_paper_preset_sets_the_official_per_task_values():
    half_cheetah = resolve_config("meow", "HalfCheetah-v4", preset="paper")
    assert half_cheetah.agent.temperature == 0.25
    assert half_cheetah.agent.tau == 0.003
    assert half_cheetah.agent.log_std_max == 2.0
    assert half_cheetah.loop.learning_starts == 10_000
    walker = resolve_config("meow", "Walker2d-v4", preset="paper")
    assert (walker.agent.temperature, walker.loop.learning_starts) == (0.1, 10_000)
    assert resolve_config("meow", "Hopper-v4", preset="paper").loop.learning_starts == 5_000
