"""DMERL: the augmented MDP (in-graph and wrapper), the data-processing bound, GAE over augmented
steps, and the on-policy loop's contracts."""

from __future__ import annotations

import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffmaxent
from diffmaxent import cli, runs
from diffmaxent.agents import diffsac, diffwpo
from diffmaxent.agents.onpolicy import ObsNorm, gae, minibatch_epochs
from diffmaxent.critics import td_target
from diffmaxent.diffusion import augmented
from diffmaxent.diffusion.augmented import (
    DenoisingPolicy,
    expand,
    generative_kernel,
    kernel_noise,
    prior_sample,
    reference_kernel,
    run_chain,
    soft_rewards,
    step_discounts,
)
from diffmaxent.diffusion.dime import dime_chain
from diffmaxent.envs import make_env
from diffmaxent.envs.augmented import AugmentedMDPEnv
from diffmaxent.errors import PresetSuiteWarning
from diffmaxent.loops.rollout import collect_rollout, make_vector_env
from diffmaxent.registry import ALGOS
from dmerl_helpers import tiny_on_policy_agent

K = 3


class CountingEnv(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def _policy(obs_dim=3, action_dim=1, num_steps=K):
    # A visible control (output_scale 1) so that the chain depends on the state and the step.
    policy = DenoisingPolicy(action_dim, num_steps, (16, 16), output_scale=1.0)
    return policy, policy.init(jax.random.PRNGKey(7), obs_dim)


# --- MDP semantics -------------------------------------------------------------------------------


def test_wrapper_steps_the_env_once_per_k_denoising_steps():
    inner = CountingEnv(make_env("Pendulum-v1", seed=0, max_episode_steps=4))
    twin = make_env("Pendulum-v1", seed=0, max_episode_steps=4)
    env = AugmentedMDPEnv(inner, K, jax.random.PRNGKey(0))
    obs, _ = env.reset()
    twin_obs, _ = twin.reset()
    np.testing.assert_array_equal(obs["obs"], twin_obs)
    rng = np.random.default_rng(0)
    length, done = 0, False
    while not done:
        k = obs["step"]
        latent = rng.normal(size=1).astype(np.float32) * 2
        next_obs, reward, terminated, truncated, info = env.step(latent)
        length += 1
        done = terminated or truncated
        if k < K - 1:
            # No env step, zero reward, same env state, the action becomes the next latent.
            assert inner.steps == length // K and reward == 0.0 and not done
            assert not info["env_step"] and next_obs["step"] == k + 1
            np.testing.assert_array_equal(next_obs["obs"], obs["obs"])
            np.testing.assert_array_equal(next_obs["latent"], latent)
        else:
            # One env step with tanh(x_K), the env's reward, and a fresh prior latent.
            assert inner.steps == length // K and info["env_step"] and next_obs["step"] == 0
            twin_next, twin_reward, twin_term, twin_trunc, _ = twin.step(np.tanh(latent))
            assert reward == twin_reward and (terminated, truncated) == (twin_term, twin_trunc)
            np.testing.assert_array_equal(next_obs["obs"], twin_next)
            expected = prior_sample(env.step_key, (1,), augmented.PRIOR_STD)
            np.testing.assert_allclose(next_obs["latent"], expected)
            assert not np.allclose(next_obs["latent"], latent)
        obs = next_obs
    assert truncated and length == K * 4  # K x the env's episode length
    assert inner.steps == 4


def _wrapper_transitions(policy, params, key, env_steps):
    env = AugmentedMDPEnv(make_env("Pendulum-v1", seed=3, max_episode_steps=2), K, key)
    obs, _ = env.reset()
    rows = []
    for _ in range(env_steps * K):
        k = obs["step"]
        noise = kernel_noise(env.step_key, K, (1, 1))[k]
        s, x = obs["obs"][None], obs["latent"][None]
        mean, std = policy.kernel(params, s, x, jnp.asarray([k]))
        x_next = np.asarray(mean + std * noise, np.float32)
        log_p_gen, log_p_ref = policy.log_densities(params, s, x, jnp.asarray([k]), x_next)
        next_obs, reward, terminated, truncated, _ = env.step(x_next[0])
        transition = (obs["obs"], obs["latent"], k, x_next[0], reward, terminated, truncated)
        rows.append((*transition, float(log_p_gen[0]), float(log_p_ref[0])))
        obs = env.reset()[0] if terminated or truncated else next_obs
    return rows


def _in_graph_transitions(policy, params, key, env_steps):
    """The in-graph form: one `denoise` call per env step, `expand` for the K transitions."""
    env = make_env("Pendulum-v1", seed=3, max_episode_steps=2)
    obs, _ = env.reset()
    key, step_key = jax.random.split(key)  # the wrapper's reset draw
    record = {n: [] for n in ("obs", "latents", "gen", "ref", "reward", "term", "trunc")}
    for _ in range(env_steps):
        chain = policy.denoise(params, jnp.asarray(obs)[None], step_key)
        next_obs, reward, terminated, truncated, _ = env.step(np.asarray(chain.action[0]))
        values = (obs[None], chain.latents, chain.log_p_gen, chain.log_p_ref)
        for name, value in zip(record, (*values, [reward], [terminated], [truncated]), strict=True):
            record[name].append(np.asarray(value, np.float32))
        key, step_key = jax.random.split(key)
        if terminated or truncated:
            obs, _ = env.reset()
            key, step_key = jax.random.split(key)  # the wrapper's reset draws again
        else:
            obs = next_obs
    stacked = {n: np.stack(v) for n, v in record.items()}
    return expand(
        stacked["obs"],
        stacked["latents"],
        stacked["gen"],
        stacked["ref"],
        stacked["reward"],
        stacked["term"],
        stacked["trunc"],
    )


def test_in_graph_and_wrapper_forms_give_identical_transitions():
    policy, params = _policy()
    key = jax.random.PRNGKey(11)
    env_steps = 5  # crosses two episode ends (2 env steps each)
    rows = _wrapper_transitions(policy, params, key, env_steps)
    aug = _in_graph_transitions(policy, params, key, env_steps)
    assert aug.obs.shape[:2] == (env_steps * K, 1)
    for i, (s, x, k, x_next, reward, term, trunc, log_gen, log_ref) in enumerate(rows):
        np.testing.assert_allclose(aug.obs[i, 0], s, rtol=1e-6)
        np.testing.assert_allclose(aug.latent[i, 0], x, rtol=1e-5, atol=1e-6)
        assert int(aug.step[i, 0]) == k
        np.testing.assert_allclose(aug.next_latent[i, 0], x_next, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(aug.reward[i, 0], reward, rtol=1e-6)
        assert float(aug.terminated[i, 0]) == term and float(aug.truncated[i, 0]) == trunc
        assert float(aug.is_last[i, 0]) == (k == K - 1)
        np.testing.assert_allclose(aug.log_p_gen[i, 0], log_gen, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(aug.log_p_ref[i, 0], log_ref, rtol=1e-5, atol=1e-5)
    assert sum(r[6] for r in rows) == 2  # both forms saw the same episode ends


def test_expand_puts_reward_and_episode_ends_on_the_last_denoising_step():
    t, b, a = 4, 3, 2
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(t, b)).astype(np.float32)
    terminated = (rng.random((t, b)) < 0.3).astype(np.float32)
    aug = expand(
        rng.normal(size=(t, b, 5)).astype(np.float32),
        rng.normal(size=(t, K + 1, b, a)).astype(np.float32),
        rng.normal(size=(t, K, b)).astype(np.float32),
        rng.normal(size=(t, K, b)).astype(np.float32),
        reward,
        terminated,
        np.zeros((t, b), np.float32),
    )
    grid = np.asarray(aug.reward).reshape(t, K, b)
    np.testing.assert_array_equal(grid[:, :-1], 0.0)
    np.testing.assert_array_equal(grid[:, -1], reward)
    np.testing.assert_array_equal(np.asarray(aug.terminated).reshape(t, K, b)[:, -1], terminated)
    assert np.asarray(aug.terminated).reshape(t, K, b)[:, :-1].sum() == 0
    np.testing.assert_array_equal(np.asarray(aug.step)[:, 0], np.tile(np.arange(K), t))
    # x_{k+1} of one step is x_k of the next inside an env step.
    latent = np.asarray(aug.latent).reshape(t, K, b, a)
    np.testing.assert_array_equal(
        np.asarray(aug.next_latent).reshape(t, K, b, a)[:, :-1], latent[:, 1:]
    )


def test_kernels_are_the_dime_samplers():
    """Per-step kernels reproduce `dime_chain` (same keys, same control)."""
    policy, params = _policy(action_dim=2)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    key = jax.random.PRNGKey(2)
    chain = policy.denoise(params, obs, key)
    network = policy.network

    def control_fn(x, k):
        return network.apply(params, obs, x, jnp.full(x.shape[:-1], k))

    reference = dime_chain(
        control_fn,
        jnp.arange(K),
        key,
        (5, 2),
        jnp.asarray(policy.step_sizes),
        prior_std=policy.prior_std,
    )
    np.testing.assert_allclose(chain.latents[-1], reference.pre_tanh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(-chain.log_ratio, reference.log_ratios, rtol=1e-4, atol=1e-4)
    # And the one-transition recomputation (PPO's ratio) agrees with the sampler's own.
    k = jnp.ones((5,), jnp.int32)
    log_gen, log_ref = policy.log_densities(params, obs, chain.latents[1], k, chain.latents[2])
    np.testing.assert_allclose(log_gen, chain.log_p_gen[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_ref, chain.log_p_ref[1], rtol=1e-5, atol=1e-5)


# --- the data-processing bound -------------------------------------------------------------------


def _linear_joint(first_mean, first_std, coef, shift, std):
    """Mean and covariance of a 1-D linear-Gaussian Markov chain z_0 ~ N(m, s^2),
    z_{i+1} = coef_i z_i + shift_i + std_i eps_i."""
    n = len(coef) + 1
    maps = np.zeros((n, n))  # z = maps @ standard normals + mean
    mean = np.zeros(n)
    maps[0, 0], mean[0] = first_std, first_mean
    for i in range(n - 1):
        maps[i + 1] = coef[i] * maps[i]
        maps[i + 1, i + 1] = std[i]
        mean[i + 1] = coef[i] * mean[i] + shift[i]
    return mean, maps @ maps.T


def _kl(mean_q, cov_q, mean_p, cov_p):
    inv = np.linalg.inv(cov_p)
    diff = mean_p - mean_q
    return 0.5 * (
        np.trace(inv @ cov_q)
        + diff @ inv @ diff
        - len(mean_q)
        + np.linalg.slogdet(cov_p)[1]
        - np.linalg.slogdet(cov_q)[1]
    )


def _chain_kls(gen, ref, prior_std, target):
    """Closed-form joint-chain KL(q || p) and marginal KL(q(x_K) || pi*)."""
    mean_q, cov_q = _linear_joint(0.0, prior_std, *gen)
    # p runs backwards from x_K ~ pi*: reverse the order to reuse the forward recursion.
    c, d, tau = (np.asarray(v)[::-1] for v in ref)
    mean_p, cov_p = _linear_joint(target[0], target[1], c, d, tau)
    mean_p, cov_p = mean_p[::-1], cov_p[::-1, ::-1]
    joint = _kl(mean_q, cov_q, mean_p, cov_p)
    marginal = _kl(
        mean_q[-1:], cov_q[-1:, -1:], np.array([target[0]]), np.array([[target[1] ** 2]])
    )
    return joint, marginal, (mean_q, cov_q)


def _exact_reversal(mean_q, cov_q):
    """q(x_k | x_{k+1}) from q's joint: coefficient, shift, std per step."""
    n = len(mean_q)
    coef = np.array([cov_q[k, k + 1] / cov_q[k + 1, k + 1] for k in range(n - 1)])
    shift = np.array([mean_q[k] - coef[k] * mean_q[k + 1] for k in range(n - 1)])
    std = np.sqrt([cov_q[k, k] - coef[k] * cov_q[k, k + 1] for k in range(n - 1)])
    return coef, shift, std


def _objective_estimate(gen, ref, prior_std, target, samples=200_000):
    """The augmented MDP's objective for alpha = 1 and reward log pi*(x_K) (unnormalised is
    fine up to a constant; here normalised): E[log p_prior(x_0)] - E[sum of soft rewards], with
    the soft rewards and log-ratios of the library's chain."""
    a, b, s = (jnp.asarray(v, jnp.float32) for v in gen)
    c, d, tau = (jnp.asarray(v, jnp.float32) for v in ref)

    def generative(x, k):
        return a[k] * x + b[k], s[k]

    def reference(x_next, k):
        return c[k] * x_next + d[k], tau[k]

    key_prior, key_noise = jax.random.split(jax.random.PRNGKey(0))
    x0 = prior_std * jax.random.normal(key_prior, (samples, 1))
    noise = jax.random.normal(key_noise, (len(gen[0]), samples, 1))
    chain = run_chain(generative, reference, x0, noise)
    log_target = augmented.prior_log_prob(chain.latents[-1] - target[0], target[1])
    num_steps = chain.log_ratio.shape[0]
    last = (jnp.arange(num_steps) == num_steps - 1)[:, None]
    rewards = soft_rewards(last * log_target, chain.log_ratio, 1.0, mode="paper")
    per_chain = augmented.prior_log_prob(x0, prior_std) - rewards.sum(0)
    return float(per_chain.mean()), float(per_chain.std() / np.sqrt(samples))


def test_joint_chain_kl_bounds_the_marginal_kl_and_is_tight_for_the_exact_reversal():
    rng = np.random.default_rng(0)
    prior_std, target = 2.0, (0.7, 0.4)
    for _ in range(3):
        gen = (rng.uniform(0.3, 1.0, K), rng.normal(0, 0.5, K), rng.uniform(0.1, 0.8, K))
        ref = (rng.uniform(0.5, 1.5, K), rng.normal(0, 0.5, K), rng.uniform(0.2, 1.0, K))
        joint, marginal, (mean_q, cov_q) = _chain_kls(gen, ref, prior_std, target)
        assert joint >= marginal + 1e-6  # data-processing inequality, strict here
        estimate, stderr = _objective_estimate(gen, ref, prior_std, target)
        assert abs(estimate - joint) < 5 * stderr + 1e-3  # the objective is the joint KL

        exact = _exact_reversal(mean_q, cov_q)
        joint_exact, marginal_exact, _ = _chain_kls(gen, exact, prior_std, target)
        np.testing.assert_allclose(joint_exact, marginal_exact, rtol=1e-8, atol=1e-8)
        estimate, stderr = _objective_estimate(gen, exact, prior_std, target)
        assert abs(estimate - marginal) < 5 * stderr + 1e-3


def test_ou_reference_kernel_reverses_the_zero_control_chain_to_first_order():
    """With no control, p_gen and p_ref are the same OU step in opposite directions: started at
    the prior, their per-step log-ratio has mean O(eta^2)."""
    eta, prior_std = jnp.asarray(0.01), 2.5
    x = prior_std * jax.random.normal(jax.random.PRNGKey(0), (400_000, 1))
    mean, std = generative_kernel(x, jnp.zeros_like(x), eta, prior_std)
    x_next = mean + std * jax.random.normal(jax.random.PRNGKey(1), x.shape)
    ref_mean, ref_std = reference_kernel(x_next, eta, prior_std)
    gen = augmented.gaussian_log_prob(x_next, mean, jnp.log(std) * jnp.ones_like(x))
    ref = augmented.gaussian_log_prob(x, ref_mean, jnp.log(ref_std) * jnp.ones_like(x))
    assert abs(float(jnp.mean(gen - ref))) < 5e-3


# --- DiffSAC's critic targets --------------------------------------------------------------------

# One chain of K = 3 denoising steps for each of three replay transitions (columns): the target
# Q'(s', tanh(x_K')) at the end of a chain and the chain's log-ratios l_0, l_1, l_2, chosen so that
# each column weights the steps differently (an off-by-one or reversed weight changes every one).
CHAIN_Q = jnp.asarray([10.0, -4.0, 0.0])
CHAIN_LOG_RATIO = jnp.asarray([[1.0, 0.0, 2.0], [2.0, 4.0, 0.0], [4.0, 0.0, 8.0]])
ALPHA, GAMMA, DENOISING_GAMMA = 0.1, 0.9, 0.5


def test_diffsac_env_target_applies_the_env_reward_and_gamma_and_stops_only_at_termination():
    # V'(s') = gamma_d^2 Q' - alpha (l_0 + gamma_d l_1 + gamma_d^2 l_2) per column:
    # 10 / 4 - 0.1 (1 + 1 + 1) = 2.2, -4 / 4 - 0.1 (0 + 2 + 0) = -1.2, 0 - 0.1 (2 + 0 + 2) = -0.4.
    next_value = diffsac.chain_soft_value(CHAIN_Q, CHAIN_LOG_RATIO, ALPHA, DENOISING_GAMMA)
    np.testing.assert_allclose(next_value, [2.2, -1.2, -0.4], rtol=1e-6)
    # An ongoing transition, a termination, and a time-limit truncation (the replay stores it
    # with terminated = 0 and the real next state, so it bootstraps like an ongoing one).
    reward = jnp.asarray([1.0, 2.0, 3.0])
    terminated = jnp.asarray([0.0, 1.0, 0.0])
    target = td_target(reward, terminated, next_value, GAMMA)
    np.testing.assert_allclose(target, [1.0 + 0.9 * 2.2, 2.0, 3.0 - 0.9 * 0.4], rtol=1e-6)


def test_diffsac_level_targets_use_the_denoising_discount_and_no_reward():
    # Levels m = 1, 2 of K = 3: y_m = gamma_d (U'(m + 1) - alpha l_m), U'(3) = Q'.
    next_values = jnp.stack([jnp.full(3, 6.0), CHAIN_Q])  # U'(s, x_2, 2), Q'(s, tanh(x_3))
    td = diffsac.level_td_targets(next_values, CHAIN_LOG_RATIO, ALPHA, DENOISING_GAMMA)
    expected_td = [
        [0.5 * (6 - 0.2), 0.5 * (6 - 0.4), 0.5 * (6 - 0.0)],  # m = 1 with l_1
        [0.5 * (10 - 0.4), 0.5 * (-4 - 0.0), 0.5 * (0 - 0.8)],  # m = 2 with l_2
    ]
    np.testing.assert_allclose(td, expected_td, rtol=1e-6)
    # The chain's own return: G_2 = gamma_d (Q' - alpha l_2), G_1 = gamma_d (G_2 - alpha l_1).
    chain = diffsac.level_return_targets(CHAIN_Q, CHAIN_LOG_RATIO, ALPHA, DENOISING_GAMMA)
    g2 = np.asarray([4.8, -2.0, -0.4])
    g1 = 0.5 * (g2 - 0.1 * np.asarray([2.0, 4.0, 0.0]))
    np.testing.assert_allclose(chain, [g1, g2], rtol=1e-6)
    # And the env target's V'(s') is the same chain's return one step further back, without a
    # discount on the step from level 0 (the env's gamma is applied outside).
    value = diffsac.chain_soft_value(CHAIN_Q, CHAIN_LOG_RATIO, ALPHA, DENOISING_GAMMA)
    np.testing.assert_allclose(value, chain[0] - ALPHA * CHAIN_LOG_RATIO[0], rtol=1e-6)


# --- DiffWPO's policy step ------------------------------------------------------------------------


def test_wpo_surrogate_value_and_its_gradient_are_the_wpo_step():
    grad_l = jnp.asarray([[2.0, -1.0]])
    grad_q = jnp.asarray([[1.0, 1.0]])
    # direction = alpha grad_l - grad_q = (0, -1.5); surrogate = 0 * 2 + (-1.5) (-1) = 1.5.
    assert float(diffwpo.wpo_surrogate(grad_l, grad_q, 0.5, 1.0)) == pytest.approx(1.5)
    # Its gradient in grad_l is the (stopped) direction, not that of (alpha l - Q) . grad l.
    gradient = jax.grad(diffwpo.wpo_surrogate)(grad_l, grad_q, 0.5, 1.0)
    np.testing.assert_allclose(gradient, [[0.0, -1.5]], rtol=1e-6)

    # A Gaussian kernel N(mu, sigma^2) at a sampled x: grad_x l = -(x - mu) / sigma^2, so the
    # surrogate's mu-gradient is weight (alpha grad_x l - grad_x Q) / sigma^2.
    x, sigma, alpha, slope = 0.3, 0.5, 0.2, 1.5  # Q(x) = slope x

    def surrogate(mu, weight):
        grad_log_ratio = -(x - mu) / sigma**2 * jnp.ones((1, 1))
        return diffwpo.wpo_surrogate(grad_log_ratio, jnp.full((1, 1), slope), alpha, weight)

    direction = alpha * -(x - 0.1) / sigma**2 - slope  # -1.66
    plain = jax.grad(surrogate)(0.1, 1.0)
    preconditioned = jax.grad(surrogate)(0.1, sigma**2)  # the inverse Fisher of the mean
    assert float(plain) == pytest.approx(direction / sigma**2, rel=1e-5)
    assert float(preconditioned) == pytest.approx(direction, rel=1e-5)
    # Descent moves the mean up the soft value: here towards larger Q, against the entropy pull.
    assert float(preconditioned) < 0


def test_wpo_trust_region_kl_is_the_gaussian_kl_summed_over_kernels():
    reference = jnp.asarray([[[1.0, 0.0]], [[0.0, 2.0]]])  # [K = 2, B = 1, A = 2]
    mean = jnp.zeros_like(reference)
    std = jnp.asarray([[[0.5]], [[1.0]]])
    # Per kernel ||mu_ref - mu||^2 / (2 sigma^2): 1 / 0.5 = 2 and 4 / 2 = 2; K x mean = 4.
    assert float(diffwpo.trust_region_kl(reference, mean, std, 2)) == pytest.approx(4.0)
    grad_reference, grad_mean = jax.grad(diffwpo.trust_region_kl, argnums=(0, 1))(
        reference, mean, std, 2
    )
    np.testing.assert_array_equal(grad_reference, 0.0)  # the reference is held fixed
    np.testing.assert_allclose(grad_mean, [[[-4.0, 0.0]], [[0.0, -2.0]]], rtol=1e-6)


@pytest.mark.parametrize(("kl", "direction"), [(0.05, 1.0), (0.01, -1.0), (0.02, 0.0)])
def test_wpo_dual_step_raises_the_multiplier_only_while_kl_exceeds_its_bound(kl, direction):
    optimizer = optax.adam(0.1)
    log_multiplier = jnp.zeros(())
    state = optimizer.init(log_multiplier)
    for step in range(1, 4):
        log_multiplier, state = diffwpo.dual_step(
            log_multiplier, state, jnp.asarray(kl), 0.02, optimizer
        )
        # A constant gradient: each Adam step moves log lambda by the learning rate.
        assert float(log_multiplier) == pytest.approx(direction * 0.1 * step, abs=1e-5)


def test_diffwpo_rule_moves_the_multiplier_with_its_own_kl_against_the_bound():
    """The rule wires the KL of its own loss into the dual step: from a reference actor far from
    the actor (KL above the bound) lambda rises; from the actor itself (KL = 0) it falls."""
    config = diffmaxent.resolve_config(
        "diffwpo", "Pendulum-v1", overrides={"num_diffusion_steps": 2, "actor_hidden_dims": "32,32"}
    ).agent
    policy = config.denoising_policy(1)

    def soft_q(critic_params, obs, x, first_level):
        return -jnp.sum(x**2, axis=-1)

    rule = diffwpo.wpo_improvement(config)(diffsac.Context(policy, soft_q, 2))
    params = policy.init(jax.random.PRNGKey(0), 3)
    obs = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    chain = policy.denoise(params, obs, jax.random.PRNGKey(2))
    near = rule.init(params)
    far = {**near, "reference_actor": jax.tree_util.tree_map(lambda p: p + 1.0, params)}
    start = float(near["log_kl_multiplier"])
    loss = jax.jit(rule.loss)  # one compilation instead of many eager second derivatives
    for aux, above in ((far, True), (near, False)):
        _, metrics = loss(params, aux, None, 0.1, obs, chain, jax.random.PRNGKey(3))
        assert (float(metrics["kl"]) > config.kl_bound) == above
        moved = float(rule.step(aux, params, metrics)["log_kl_multiplier"])
        assert (moved > start) == above and moved != start


# --- GAE, soft rewards, normaliser ---------------------------------------------------------------


def _python_gae(reward, value, next_value, discount, lam, terminated, done):
    advantage = np.zeros_like(reward)
    running = np.zeros(reward.shape[1])
    for t in reversed(range(reward.shape[0])):
        delta = reward[t] + discount[t] * (1 - terminated[t]) * next_value[t] - value[t]
        running = delta + discount[t] * lam[t] * (1 - done[t]) * running
        advantage[t] = running
    return advantage


def test_gae_over_augmented_steps_matches_a_python_loop():
    rng = np.random.default_rng(0)
    t, b = 6, 4
    n = t * K
    is_last = np.tile((np.arange(K) == K - 1).astype(np.float32), t)[:, None] * np.ones((1, b))
    terminated = is_last * (rng.random((n, b)) < 0.15)
    truncated = is_last * (1 - terminated) * (rng.random((n, b)) < 0.15)
    done = np.maximum(terminated, truncated)
    reward = rng.normal(size=(n, b)).astype(np.float32)
    value = rng.normal(size=(n, b)).astype(np.float32)
    next_value = rng.normal(size=(n, b)).astype(np.float32)
    discount = np.asarray(step_discounts(is_last, 0.9, 0.97))
    lam = np.where(is_last > 0, 0.8, 0.95)
    advantage, returns = gae(
        jnp.asarray(reward),
        jnp.asarray(value),
        jnp.asarray(next_value),
        jnp.asarray(discount),
        jnp.asarray(lam),
        jnp.asarray(terminated),
        jnp.asarray(done),
    )
    expected = _python_gae(reward, value, next_value, discount, lam, terminated, done)
    np.testing.assert_allclose(advantage, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected + value, rtol=1e-5, atol=1e-5)
    assert set(np.unique(discount)) == {np.float32(0.9), np.float32(0.97)}


def test_soft_reward_modes_and_entropy_estimate():
    log_ratio = jnp.asarray([[0.5], [1.0], [-0.2]])
    reward = jnp.asarray([[0.0], [0.0], [2.0]])
    paper = soft_rewards(reward, log_ratio, 0.1)
    np.testing.assert_allclose(paper[:, 0], [-0.05, -0.1, 2.02], rtol=1e-6)
    official = soft_rewards(
        reward,
        log_ratio,
        0.1,
        mode="official",
        next_log_ratio=jnp.roll(log_ratio, -1, 0),
        discount=0.5,
    )
    np.testing.assert_allclose(official[:, 0], [-0.05, 0.01, 2.0 - 0.025], rtol=1e-6)
    assert float(augmented.entropy_estimate(log_ratio, 3)) == pytest.approx(-1.3)


def test_obs_norm_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(3, 50, 4)).astype(np.float32)
    norm = ObsNorm.create(4)
    for chunk in data:
        norm = norm.update(jnp.asarray(chunk))
    flat = data.reshape(-1, 4)
    np.testing.assert_allclose(norm.mean, flat.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.var, flat.var(0), rtol=1e-3)


def test_minibatch_epochs_visit_every_sample_once_per_epoch():
    data = {"x": jnp.arange(12.0)}

    def step(state, batch, key):
        return state + jnp.sum(batch["x"]), {"n": jnp.asarray(batch["x"].shape[0], jnp.float32)}

    total, metrics = minibatch_epochs(step, jnp.zeros(()), data, jax.random.PRNGKey(0), 3, 4)
    assert float(total) == 3 * 66.0 and float(metrics["n"]) == 4


# --- the on-policy loop --------------------------------------------------------------------------

TINY_ON_POLICY = {
    "ppo": {"num_envs": 2, "rollout_steps": 16, "epochs": 2, "batch_size": 32},
    "diffppo": {
        "num_envs": 2,
        "rollout_steps": 8,
        "epochs": 2,
        "batch_size": 32,
        "num_diffusion_steps": 2,
        "actor_hidden_dims": "32,32",
        "critic_hidden_dims": "32,32",
    },
}


def test_rollout_keeps_the_real_final_observation_at_an_episode_end():
    agent, _, _ = tiny_on_policy_agent("ppo", TINY_ON_POLICY["ppo"])
    envs = make_vector_env("Pendulum-v1", 2, seed=0)
    obs, _ = envs.reset()
    state = agent.init(jax.random.PRNGKey(0))
    rollout, _, _ = collect_rollout(agent, state, envs, obs, jax.random.PRNGKey(0), 202)
    ends = np.flatnonzero(rollout.truncated[:, 0])
    assert list(ends) == [199]  # Pendulum's 200-step limit
    # Inside an episode next_obs is the next step's obs; at the end it is not (a reset follows).
    np.testing.assert_array_equal(rollout.next_obs[:199], rollout.obs[1:200])
    assert not np.allclose(rollout.next_obs[199], rollout.obs[200])
    assert rollout.terminated.sum() == 0


@pytest.mark.parametrize("algo", ["ppo", "diffppo"])
@pytest.mark.parametrize("soft_reward", ["paper", "official"])
def test_truncation_bootstraps_like_an_ongoing_step_and_termination_does_not(algo, soft_reward):
    if algo == "ppo" and soft_reward == "official":
        pytest.skip("ppo has no soft reward")
    extra = {"soft_reward": soft_reward} if algo == "diffppo" else {}
    # gae_lambda = 0: no advantage trace crosses an env transition, so the trace that an episode
    # end cuts is zero anyway and only the bootstrap can tell the cases apart.
    overrides = {**TINY_ON_POLICY[algo], **extra, "gae_lambda": 0.0}
    agent, source, _ = tiny_on_policy_agent(algo, overrides)
    state = agent.init(jax.random.PRNGKey(0))
    rollout = source.rollout
    key = jax.random.PRNGKey(3)
    t = 3

    def loss_with(terminated, truncated, next_obs_shift):
        flags = np.zeros_like(rollout.terminated)
        term, trunc = flags.copy(), flags.copy()
        term[t, 0], trunc[t, 0] = terminated, truncated
        next_obs = np.array(rollout.next_obs)
        next_obs[t, 0] += next_obs_shift
        changed = rollout._replace(terminated=term, truncated=trunc, next_obs=next_obs)
        return float(agent.update(state, changed, key)[1]["value_loss"])

    for shift in (0.0, 0.5):
        # A truncation bootstraps from the stored next state exactly as an ongoing step does ...
        assert loss_with(0.0, 1.0, shift) == loss_with(0.0, 0.0, shift)
    # ... which is what is bootstrapped (not the next row's observation) ...
    assert loss_with(0.0, 1.0, 0.0) != loss_with(0.0, 1.0, 0.5)
    # ... and a termination bootstraps nothing.
    assert loss_with(1.0, 0.0, 0.0) == loss_with(1.0, 0.0, 0.5)


def test_diffppo_annealed_temperature_follows_the_schedule():
    overrides = {
        **TINY_ON_POLICY["diffppo"],
        "temperature": 0.1,
        "anneal_steps": 32,
        "final_temperature": 0.001,
    }
    agent, source, _ = tiny_on_policy_agent("diffppo", overrides)
    state = agent.init(jax.random.PRNGKey(0))
    seen = []
    for i in range(3):  # 16 env steps per rollout
        state, metrics = agent.update(state, source.rollout, jax.random.PRNGKey(i))
        seen.append(float(metrics["temperature"]))
    np.testing.assert_allclose(seen, [0.1 * 0.01**0.5, 0.001, 0.001], rtol=1e-5)


def test_on_policy_run_directory_eval_cli_and_load(tmp_path, capsys):
    overrides = {**TINY_ON_POLICY["diffppo"], "eval_every": 20, "eval_episodes": 1}
    result = diffmaxent.train(
        "diffppo",
        "Pendulum-v1",
        steps=40,
        out=tmp_path / "run",
        overrides=overrides,
        progress=False,
    )
    rows = runs.read_metrics(result.run_dir)
    assert [r["env_step"] for r in rows] == [32, 48]  # whole rollouts of 16 env steps
    assert {"eval_return_mean", "eval_return_std", "wall_seconds", "entropy"} <= set(rows[0])
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["loop"]["num_envs"] == 2 and config["agent"]["num_diffusion_steps"] == 2
    assert (result.run_dir / "curve.png").exists()
    assert cli.main(["eval", str(result.run_dir), "--episodes", "1"]) == 0
    assert "checkpoint at step 48" in capsys.readouterr().out
    loaded = diffmaxent.load(result.run_dir)
    action = loaded.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 2.0


def test_on_policy_hyperparameters_are_validated():
    with pytest.raises(diffmaxent.UsageError, match="learning_starts"):
        diffmaxent.resolve_config("ppo", "Pendulum-v1", overrides={"learning_starts": 10})
    with pytest.raises(diffmaxent.UsageError, match="num_envs"):
        diffmaxent.resolve_config("diffppo", "Pendulum-v1", overrides={"num_envs": 0})


# --- evaluation protocol and the official presets ------------------------------------------------

DMERL_ALGOS = ("diffppo", "diffsac", "diffwpo")


@pytest.mark.filterwarnings("ignore::diffmaxent.errors.PresetSuiteWarning")
@pytest.mark.parametrize("algo", DMERL_ALGOS)
def test_dmerl_presets_evaluate_the_sampled_chain_as_the_da_mdp_code_does(algo):
    for preset in ALGOS[algo].presets:
        config = diffmaxent.resolve_config(algo, "Pendulum-v1", preset=preset)
        assert config.loop.eval_deterministic is False, preset


def test_dmerl_stochastic_action_is_the_training_samplers_chain_from_a_prior_draw():
    """What evaluation executes is a sample of the policy: the same chain as a rollout's (a fresh
    x_0 ~ N(0, prior_std^2 I) and K noisy kernels), not the noise-free chain from x_0 = 0."""
    agent, _, config = tiny_on_policy_agent("diffppo", TINY_ON_POLICY["diffppo"])
    state = agent.init(jax.random.PRNGKey(0))
    obs = jnp.ones((256, 3), jnp.float32)
    key = jax.random.PRNGKey(5)
    sampled = agent.act(state, obs, key, False)
    collected, chain = agent.collect(state, obs, key)
    np.testing.assert_array_equal(sampled, collected)
    # The chain starts from a prior draw: x_0 has the prior's spread across the batch.
    prior_std = config.agent.prior_std
    assert float(jnp.std(chain["latents"][0])) == pytest.approx(prior_std, rel=0.15)
    # The untrained policy barely moves x_0 (near-zero control): actions spread like tanh of a
    # prior draw, while the deterministic option gives one action for one state.
    assert float(jnp.std(sampled)) > 0.5
    deterministic = agent.act(state, obs, key, True)
    assert np.ptp(np.asarray(deterministic)) == 0.0


OFFICIAL_SETTINGS = {
    "diffppo": {
        "prior_std": 3.0,
        "step_size": 0.5,
        "min_step_fraction": 0.17,
        "temperature": 2e-4,
        "epochs": 12,
        "clip_value": False,
        "soft_reward": "paper",
    },
    "diffwpo": {
        "init_kl_multiplier": 0.3,
        "precondition": False,
        "init_temperature": 0.01,
        "temperature_lr": 6e-4,
        "gamma": 0.999,
        "denoising_gamma": 0.999,
        "kl_bound": 0.02,
        "dual_lr": 6e-4,
    },
}


@pytest.mark.parametrize("algo", OFFICIAL_SETTINGS)
def test_official_preset_sets_the_codes_settings_and_its_note_names_each_change(algo):
    with pytest.warns(PresetSuiteWarning):  # tuned on DeepMind Control
        config = diffmaxent.resolve_config(algo, "Pendulum-v1", preset="official")
    for name, value in OFFICIAL_SETTINGS[algo].items():
        part = config.agent if hasattr(config.agent, name) else config.loop
        assert getattr(part, name) == value, name
    presets = ALGOS[algo].presets
    official, paper = presets["official"], presets["paper"]
    changed = {k for k, v in official.values.items() if paper.values.get(k) != v}
    assert changed, "official equals paper"
    assert [name for name in sorted(changed) if name not in official.note] == []
    assert set(paper.values) <= set(official.values)  # official is paper plus the changes
