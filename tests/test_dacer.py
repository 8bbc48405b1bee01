"""DACER: the GMM entropy estimate against closed forms, the entropy regulator's direction, the
added noise's scale, gradients through the reverse chain, the policy delay, presets."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agent_helpers import tiny_agent
from diffmaxent import resolve_config
from diffmaxent.agents.dacer import PRESETS, DiffusionPolicy, gmm_entropy, policy_loss
from diffmaxent.diffusion import NoiseNet

TINY = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "16,16",
    "num_diffusion_steps": 3,
    "batch_size": 16,
    "entropy_states": 4,
    "entropy_samples": 32,
    "gmm_iterations": 10,
}


def gaussian_entropy(covariance) -> float:
    dim = len(covariance)
    return 0.5 * dim * (1.0 + math.log(2.0 * math.pi)) + 0.5 * np.linalg.slogdet(covariance)[1]


def test_gmm_entropy_of_one_gaussian_is_its_closed_form():
    covariance = np.array([[0.5, 0.2], [0.2, 0.3]])
    samples = jax.random.multivariate_normal(
        jax.random.PRNGKey(0), jnp.array([0.3, -0.2]), covariance, (4000,)
    )
    estimate = jax.jit(gmm_entropy, static_argnums=(2, 3))(samples, jax.random.PRNGKey(1), 1, 5)
    assert abs(float(estimate) - gaussian_entropy(covariance)) < 0.05


def test_gmm_entropy_of_two_separated_gaussians_is_log_2_plus_theirs():
    std = 0.3
    key_side, key_noise = jax.random.split(jax.random.PRNGKey(0))
    side = jnp.where(jax.random.bernoulli(key_side, 0.5, (4000, 1)), 5.0, -5.0)
    samples = side + std * jax.random.normal(key_noise, (4000, 1))
    expected = math.log(2.0) + gaussian_entropy([[std**2]])
    # Several starts: EM from two means in the same cluster must still separate them.
    for seed in range(4):
        estimate = gmm_entropy(samples, jax.random.PRNGKey(seed), 2, 30)
        assert abs(float(estimate) - expected) < 0.05, seed


def regulated_temperature(target_entropy: float) -> tuple[float, float, float]:
    """Initial and updated alpha after one update that estimates the entropy, and the estimate."""
    agent, buffer, _ = tiny_agent(
        "dacer", {**TINY, "alpha_update_every": 1, "target_entropy": target_entropy}
    )
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), TINY["batch_size"], 1)
    new_state, metrics = agent.update(state, batch, jax.random.PRNGKey(1))
    return (
        float(jnp.exp(state.log_temperature)),
        float(jnp.exp(new_state.log_temperature)),
        float(metrics["entropy"]),
    )


def test_alpha_falls_when_the_entropy_estimate_is_above_its_target_and_rises_below():
    before, after, entropy = regulated_temperature(target_entropy=-20.0)
    assert entropy > -20.0
    assert after < before
    before, after, entropy = regulated_temperature(target_entropy=20.0)
    assert entropy < 20.0
    assert after > before


def entropy_estimate(alpha: float, before_clip: bool) -> float:
    agent, buffer, _ = tiny_agent(
        "dacer",
        {**TINY, "init_temperature": alpha, "entropy_before_clip": before_clip},
    )
    batch = buffer.sample(np.random.default_rng(0), TINY["batch_size"], 1)
    _, metrics = agent.update(agent.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1))
    return float(metrics["entropy"])


def test_the_unclipped_entropy_estimate_rises_with_alpha_and_the_clipped_one_falls():
    # The clipped actions pile up at the box edge, which the mixture reads as low entropy: the
    # feedback that lets alpha run away under the code's estimate (module docstring).
    assert entropy_estimate(10.0, before_clip=True) > entropy_estimate(1.0, before_clip=True) + 0.5
    assert entropy_estimate(10.0, before_clip=False) < entropy_estimate(1.0, before_clip=False)


def test_the_added_noise_has_std_noise_scale_times_alpha():
    obs = jnp.zeros((4000, 3))
    key = jax.random.PRNGKey(3)
    for alpha in (0.5, 1.5):
        agent, _, config = tiny_agent("dacer", {**TINY, "init_temperature": alpha})
        state = agent.init(jax.random.PRNGKey(0))
        noisy = np.asarray(agent.act(state, obs, key, False))
        chain_only = np.asarray(agent.act(state, obs, key, True))
        # Far enough from the box edge (>= 4.7 noise stds) that clipping does not cut the noise.
        inside = np.abs(chain_only) < 0.3
        spread = np.std((noisy - chain_only)[inside])
        expected = config.agent.noise_scale * alpha
        assert abs(spread / expected - 1.0) < 0.1, alpha


def test_the_actor_gradient_flows_through_the_chain_and_raises_a_quadratic_q():
    noise_net = NoiseNet(1, (32, 32))
    policy = DiffusionPolicy(noise_net, "ddpm", 5, noise_scale=0.1)
    obs = jax.random.normal(jax.random.PRNGKey(5), (256, 3))
    params = noise_net.init(jax.random.PRNGKey(0), obs[:1], jnp.zeros((1, 1)), jnp.zeros((1,)))
    alpha = jnp.asarray(1.0)

    def q_fn(action):
        return -jnp.sum((action - 0.5) ** 2, axis=-1)

    def loss(params, key):
        return policy_loss(q_fn(policy.sample(params, obs, key, alpha)))

    def mean_q(params):
        return float(-loss(params, jax.random.PRNGKey(10_000)))

    grads = jax.grad(loss)(params, jax.random.PRNGKey(1))
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    q_before = mean_q(params)
    step = jax.jit(jax.grad(loss))
    for i in range(100):
        updates, opt_state = optimizer.update(step(params, jax.random.PRNGKey(i)), opt_state)
        params = optax.apply_updates(params, updates)
    # From about -0.6 (a spread N(0, 1) clipped to the box) to the added noise's 0.01.
    assert mean_q(params) > q_before + 0.3
    assert mean_q(params) > -0.1


def test_actor_and_target_critics_step_on_every_second_update():
    leaves = jax.tree_util.tree_leaves
    agent, buffer, _ = tiny_agent("dacer", TINY)
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    changed = []
    for i in range(4):
        batch = buffer.sample(rng, TINY["batch_size"], 1)
        new_state, _ = agent.update(state, batch, jax.random.PRNGKey(i))
        moved = [
            any(not np.array_equal(a, b) for a, b in zip(leaves(old), leaves(new), strict=True))
            for old, new in (
                (state.actor_params, new_state.actor_params),
                (state.target_critic_params, new_state.target_critic_params),
                (state.critic_params, new_state.critic_params),
            )
        ]
        changed.append(moved)
        state = new_state
    assert changed == [[True, True, True], [False, False, True]] * 2


def test_paper_preset_has_the_humanoid_noise_scale_and_names_the_vector_envs():
    assert resolve_config("dacer", "Humanoid-v4", preset="paper").agent.noise_scale == 0.15
    assert resolve_config("dacer", "Hopper-v4", preset="paper").agent.noise_scale == 0.1
    note = PRESETS["paper"].note
    assert "20 vector envs" in note and "30M" in note
