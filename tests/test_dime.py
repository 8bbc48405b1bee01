"""Analytic tests of DIME's sampler and bound, BatchRenorm, the categorical critic, and the
agents' schedule (policy delay, temperature target).

Ground truth for the bound comes from zero-control chains, which are linear-Gaussian: every
marginal is Gaussian with a variance given by a recursion, so the true entropy and the expected
bound are closed form. Seeds are fixed; every tolerance says why.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffmaxent.agents.dime import make_policy
from diffmaxent.api import resolve_config
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.critics import BatchRenorm, CrossQCritic, categorical_projection
from diffmaxent.diffusion import DIMEPolicy, cosine_dt_shape, dime_chain
from diffmaxent.envs import make_env
from diffmaxent.registry import ALGOS
from diffmaxent.types import Batch

NUM_SAMPLES = 20_000


def zero_control(x, step_input):
    return jnp.zeros_like(x)


def linear_gaussian_chain(prior_std: float, reference_std: float, eta: np.ndarray):
    """Zero control: ``x_{k+1} = a_k x_k + sqrt(2 eta_k) eps`` with ``a_k = 1 - eta_k / ref^2``.

    Returns per dimension ``(expected bound on H[x_N], true H[x_N], Var[x_N])``. The expected
    log-ratio uses ``E[(x_k - a x_{k+1})^2] = v_k - 2 a^2 v_k + a^2 v_{k+1}``."""
    v = prior_std**2
    bound = 0.5 * math.log(2 * math.pi * prior_std**2) + 0.5  # -E[log p_prior(x_0)]
    for e in eta:
        a, s2 = 1.0 - e / reference_std**2, 2.0 * e
        v_next = a * a * v + s2
        bound += -(v - 2 * a * a * v + a * a * v_next) / (2 * s2) + 0.5
        v = v_next
    return bound, 0.5 * math.log(2 * math.pi * math.e * v), v


def expected_tanh_log_det(variance: float) -> float:
    """``E[log(1 - tanh(x)^2)]`` for ``x ~ N(0, variance)`` by 80-point Gauss-Hermite."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    x = math.sqrt(variance) * z
    log_det = 2.0 * (math.log(2.0) - x - np.logaddexp(0.0, -2.0 * x))
    return float(np.sum(w * log_det) / math.sqrt(2 * math.pi))


# --- step sizes ---------------------------------------------------------------------------------


def test_cosine_step_shape_matches_the_official_schedule():
    # dt = 0.1 on the cosine shape, 16 steps: 0.0999 at the noise end, 0.00104 next to the
    # action, 0.844 in total (the official code's values at initialisation).
    dt = 0.1 * np.asarray(cosine_dt_shape(16))
    assert dt[0] == pytest.approx(0.0999, abs=1e-4)
    assert dt[-1] == pytest.approx(0.00104, abs=1e-5)
    assert dt.sum() == pytest.approx(0.844, abs=1e-3)
    assert np.all(np.diff(dt) < 0)


def test_policy_initial_step_sizes_and_near_zero_control():
    policy = DIMEPolicy(action_dim=3, hidden_dims=(32, 32, 32), time_dim=16, num_frequencies=8)
    params = policy.init(jax.random.PRNGKey(0), obs_dim=5)
    eta = np.asarray(policy.step_sizes(params))
    assert eta.shape == (16, 3)
    np.testing.assert_allclose(eta[:, 0], 0.1 * np.asarray(cosine_dt_shape(16)), rtol=1e-5)
    control = policy.network.apply(
        params["control"], jnp.ones((4, 5)), 2.5 * jnp.ones((4, 3)), jnp.full((4,), 3)
    )
    assert control.shape == (4, 3) and float(jnp.abs(control).max()) < 1e-4


def test_sample_shapes_and_action_range():
    policy = DIMEPolicy(action_dim=2, hidden_dims=(16, 16), num_steps=5, time_dim=8)
    params = policy.init(jax.random.PRNGKey(0), obs_dim=3)
    sample = policy.sample(params, jnp.zeros((7, 3)), jax.random.PRNGKey(1))
    assert sample.action.shape == (7, 2) and sample.pre_tanh.shape == (7, 2)
    assert sample.log_ratios.shape == (5, 7)
    assert sample.running_cost.shape == sample.terminal_cost.shape == (7,)
    assert float(jnp.abs(sample.action).max()) < 1.0
    np.testing.assert_allclose(
        sample.running_cost,
        -(sample.log_ratios.sum(0) + sample.tanh_log_det),
        rtol=1e-5,
        atol=1e-5,
    )
    # Deterministic mode: the noiseless chain does not depend on the key.
    a = policy.sample(params, jnp.zeros((2, 3)), jax.random.PRNGKey(1), zero_noise=True)
    b = policy.sample(params, jnp.zeros((2, 3)), jax.random.PRNGKey(2), zero_noise=True)
    np.testing.assert_array_equal(a.action, b.action)


# --- the entropy lower bound --------------------------------------------------------------------


@pytest.mark.parametrize(
    "prior_std, eta",
    [
        (0.3, np.full(8, 0.1)),  # a narrow prior: the reference kernels are far from the reversal
        (2.5, 0.1 * np.asarray(cosine_dt_shape(16))),  # DIME's initial chain
    ],
)
def test_monte_carlo_bound_matches_closed_form_and_lies_below_the_true_entropy(prior_std, eta):
    action_dim = 2
    sample = dime_chain(
        zero_control,
        jnp.zeros((len(eta),)),
        jax.random.PRNGKey(0),
        (NUM_SAMPLES, action_dim),
        jnp.asarray(eta),
        prior_std=prior_std,
        reference_std=2.5,
    )
    bound_x, entropy_x, variance = linear_gaussian_chain(prior_std, 2.5, eta)
    log_det = expected_tanh_log_det(variance)
    true_entropy = action_dim * (entropy_x + log_det)
    expected_bound = action_dim * (bound_x + log_det)

    estimates = np.asarray(sample.entropy_bound, np.float64)
    mean, stderr = estimates.mean(), estimates.std() / math.sqrt(NUM_SAMPLES)
    np.testing.assert_allclose(np.asarray(sample.pre_tanh).var(0), variance, rtol=0.04)
    # The estimator is unbiased for the closed-form expected bound (4 standard errors).
    assert abs(mean - expected_bound) < 4 * stderr + 1e-3
    assert expected_bound <= true_entropy + 1e-6
    if prior_std < 1.0:
        # A real gap (1.3 nats per dimension), visible through the Monte Carlo noise.
        assert true_entropy - expected_bound > 2.0
        assert mean + 4 * stderr < true_entropy


def test_bound_is_exact_when_policy_kernels_are_the_reversal_of_the_reference():
    # A constant step from the OU chain's stationary law N(0, v) with v = 2 eta / (1 - a^2) is a
    # reversible Gaussian AR(1): the policy's backward conditionals are the reference kernels, so
    # every single sample's bound equals -log p(x_N) exactly, and its mean is the true entropy.
    eta, ref_std, num_steps, action_dim = 0.2, 2.5, 8, 3
    a = 1.0 - eta / ref_std**2
    stationary_var = 2.0 * eta / (1.0 - a * a)
    sample = dime_chain(
        zero_control,
        jnp.zeros((num_steps,)),
        jax.random.PRNGKey(3),
        (NUM_SAMPLES, action_dim),
        jnp.full((num_steps,), eta),
        prior_std=math.sqrt(stationary_var),
        reference_std=ref_std,
    )
    x = np.asarray(sample.pre_tanh, np.float64)
    neg_log_density = np.sum(
        0.5 * x**2 / stationary_var + 0.5 * np.log(2 * np.pi * stationary_var), -1
    )
    exact = neg_log_density + np.asarray(sample.tanh_log_det, np.float64)
    # float32 arithmetic over 8 steps of O(1) terms.
    np.testing.assert_allclose(np.asarray(sample.entropy_bound), exact, atol=2e-4, rtol=1e-5)
    true_entropy = action_dim * (
        0.5 * math.log(2 * math.pi * math.e * stationary_var)
        + expected_tanh_log_det(stationary_var)
    )
    stderr = exact.std() / math.sqrt(NUM_SAMPLES)
    assert abs(exact.mean() - true_entropy) < 4 * stderr


def test_gradients_reach_every_step_and_the_step_sizes():
    num_steps, action_dim = 6, 2
    obs = jnp.zeros((64, 1))

    def loss(shifts, log_eta):
        # A per-step constant control: shifts[k] only acts at step k.
        sample = dime_chain(
            lambda x, shift: jnp.broadcast_to(shift, x.shape),
            shifts,
            jax.random.PRNGKey(0),
            (obs.shape[0], action_dim),
            jnp.exp(log_eta),
        )
        return jnp.mean(sample.action[:, 0] + 0.1 * sample.cost)

    shifts = 0.3 * jnp.ones((num_steps, action_dim))
    grad_shifts, grad_eta = jax.grad(loss, argnums=(0, 1))(
        shifts, jnp.log(jnp.full((num_steps,), 0.1))
    )
    assert np.all(np.abs(np.asarray(grad_shifts)).sum(-1) > 0)
    assert np.all(np.abs(np.asarray(grad_eta)) > 0)

    policy = DIMEPolicy(action_dim=2, hidden_dims=(16, 16), num_steps=4, time_dim=8)
    params = policy.init(jax.random.PRNGKey(0), obs_dim=3)
    grads = jax.grad(
        lambda p: (
            jnp.mean(policy.sample(p, jnp.ones((32, 3)), jax.random.PRNGKey(1)).cost)
            + jnp.mean(policy.sample(p, jnp.ones((32, 3)), jax.random.PRNGKey(1)).action)
        )
    )(params)
    assert float(jnp.abs(grads["dt"])) > 0
    assert np.all(np.abs(np.asarray(grads["friction"])) > 0)
    output_kernel = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(grads["control"])
        if "trunk" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
    ][-1]
    assert float(jnp.abs(output_kernel).max()) > 0


# --- BatchRenorm --------------------------------------------------------------------------------


def _renorm_apply(module, variables, x, train):
    out, updates = module.apply(variables, x, train=train, mutable=["batch_stats"])
    return out, {"params": variables["params"], "batch_stats": updates["batch_stats"]}


def test_batch_renorm_running_statistics_move_in_training_and_not_in_evaluation():
    module = BatchRenorm(momentum=0.9, warmup_steps=0)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (256, 4))
    variables = module.init(jax.random.PRNGKey(1), x, train=False)
    stats = variables["batch_stats"]
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)

    _, after = _renorm_apply(module, variables, x, train=True)
    moved = after["batch_stats"]
    np.testing.assert_allclose(moved["mean"], 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(moved["var"], 0.9 + 0.1 * x.var(0), rtol=1e-5)
    assert int(moved["steps"]) == 1

    out_eval, unchanged = _renorm_apply(module, after, x, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged, after)
    expected = (x - moved["mean"]) / jnp.sqrt(moved["var"] + 1e-3)
    np.testing.assert_allclose(out_eval, expected, rtol=1e-5, atol=1e-5)


def test_batch_renorm_warm_up_is_batch_norm_then_renormalisation():
    warmup = 3
    module = BatchRenorm(momentum=0.5, warmup_steps=warmup)
    key = jax.random.PRNGKey(0)
    variables = module.init(key, jnp.zeros((8, 2)), train=False)
    for i in range(warmup):
        x = 1.0 + 0.5 * jax.random.normal(jax.random.fold_in(key, i), (512, 2))
        out, variables = _renorm_apply(module, variables, x, train=True)
        # Warm-up: plain batch normalisation, whatever the running statistics.
        plain = (x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-3)
        np.testing.assert_allclose(out, plain, rtol=1e-4, atol=1e-4)

    # After the warm-up, with r and d inside their clips, the training-mode value equals the
    # evaluation-mode value (running statistics) ...
    x = 1.0 + 0.5 * jax.random.normal(jax.random.fold_in(key, 99), (512, 2))
    out_train, _ = _renorm_apply(module, variables, x, train=True)
    out_eval, _ = _renorm_apply(module, variables, x, train=False)
    np.testing.assert_allclose(out_train, out_eval, rtol=1e-4, atol=1e-4)
    plain = (x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-3)
    assert float(jnp.abs(out_train - plain).max()) > 1e-3

    # ... while the gradient still flows through the batch statistics (it would be a constant
    # per-feature scale with the running statistics).
    def total(inputs, train):
        return jnp.sum(_renorm_apply(module, variables, inputs, train)[0][:, 0] ** 3)

    grad_train = jax.grad(total)(x, True)
    grad_eval = jax.grad(total)(x, False)
    assert float(jnp.abs(grad_train - grad_eval).max()) > 1e-3

    # Far from the running statistics, r and d are clipped (r_max 3, d_max 5).
    far = 100.0 + 50.0 * jax.random.normal(jax.random.fold_in(key, 7), (512, 2))
    out_far, _ = _renorm_apply(module, variables, far, train=True)
    stats = variables["batch_stats"]
    std_b = jnp.sqrt(far.var(0) + 1e-3)
    running_std = jnp.sqrt(stats["var"] + 1e-3)
    r = jnp.clip(std_b / running_std, 1 / 3, 3)
    d = jnp.clip((far.mean(0) - stats["mean"]) / running_std, -5, 5)
    np.testing.assert_allclose(out_far, (far - far.mean(0)) / std_b * r + d, rtol=1e-4, atol=1e-3)


# --- categorical critic -------------------------------------------------------------------------


def _c51_reference(atoms, probs, support):
    """C51's projection written as the textbook loop (floor/ceil with the l == u case)."""
    v_min, v_max, k = support[0], support[-1], len(support)
    delta = (v_max - v_min) / (k - 1)
    out = np.zeros((atoms.shape[0], k))
    for i in range(atoms.shape[0]):
        for j in range(k):
            b = (np.clip(atoms[i, j], v_min, v_max) - v_min) / delta
            low, up = int(np.floor(b)), int(np.ceil(b))
            if low == up:
                out[i, low] += probs[i, j]
            else:
                out[i, low] += probs[i, j] * (up - b)
                out[i, up] += probs[i, j] * (b - low)
    return out


def test_categorical_projection_matches_c51_and_keeps_mass_and_mean():
    rng = np.random.default_rng(0)
    support = np.linspace(-10.0, 10.0, 21)
    probs = rng.dirichlet(np.ones(21), size=16)
    atoms = 1.5 + 0.9 * support[None, :] + rng.normal(0, 3, size=(16, 1))
    atoms[0, :] = support  # every atom exactly on a support point (C51's l == u case)
    projected = np.asarray(categorical_projection(jnp.asarray(atoms), jnp.asarray(probs), support))
    np.testing.assert_allclose(projected, _c51_reference(atoms, probs, support), atol=1e-6)
    np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(projected[0], probs[0], atol=1e-6)
    inside = np.all((atoms >= -10) & (atoms <= 10), axis=-1)
    np.testing.assert_allclose(
        (projected * support).sum(-1)[inside], (probs * atoms).sum(-1)[inside], atol=1e-4
    )
    # Outside the support the mass lands on the nearest end.
    far = np.asarray(
        categorical_projection(jnp.full((1, 21), 50.0), jnp.asarray(probs[:1]), support)
    )
    assert far[0, -1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("head", ["distributional", "scalar"])
def test_critic_on_terminal_transitions_learns_the_reward(head):
    # Every transition terminates: the target is the reward alone, whatever the next action
    # and its cost.
    critic = CrossQCritic(2, 1, hidden_dims=(32,), head=head, num_atoms=21, v_min=-5, v_max=5)
    params, stats = critic.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(128, 2)).astype(np.float32)
    batch = Batch(
        obs=obs,
        action=rng.uniform(-1, 1, (128, 1)).astype(np.float32),
        reward=np.clip(obs[:, 0] + 0.5 * obs[:, 1], -3.0, 3.0).astype(np.float32),
        next_obs=rng.normal(size=(128, 2)).astype(np.float32),
        terminated=np.ones(128, np.float32),
        truncated=np.zeros(128, np.float32),
    )
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        grads, (stats, _) = jax.grad(critic.loss, has_aux=True)(
            params, stats, batch, jnp.zeros((128, 1)), jnp.full((128,), 3.0), 1.0, 0.99
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state

    for _ in range(300):
        params, stats, opt_state = step(params, stats, opt_state)
    q = np.asarray(critic.reduce(critic.q_values(params, stats, batch.obs, batch.action)))
    # A regression on 128 fixed points; the categorical head's atoms are 0.5 apart.
    assert np.mean(np.abs(q - batch.reward)) < 0.1


# --- agents: policy delay and the temperature target -------------------------------------------

SMALL_DIME = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "32,32",
    "num_diffusion_steps": 3,
    "time_dim": 8,
    "num_frequencies": 4,
    "num_atoms": 11,
    "batch_size": 32,
    "updates_per_step": 1,
}


def _agent(algo, overrides):
    config = resolve_config(algo, "Pendulum-v1", overrides=overrides)
    env = make_env("Pendulum-v1", seed=0)
    agent = ALGOS[algo].make(config.agent, env.env_spec)
    buffer = ReplayBuffer(300, 3, 1)
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    for _ in range(300):
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
    return agent, buffer


@pytest.mark.parametrize(
    "algo, overrides",
    [
        ("dime", SMALL_DIME),
        ("crossq", {"actor_hidden_dims": "16,16", "critic_hidden_dims": "32,32"}),
    ],
)
def test_actor_and_temperature_step_once_per_policy_delay_critic_steps(algo, overrides):
    agent, buffer = _agent(algo, {**overrides, "batch_size": 32, "updates_per_step": 1})
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    actor_changed, temperature_changed = [], []
    for i in range(6):
        previous = state
        state, _ = agent.update(state, buffer.sample(rng, 32, 1), jax.random.PRNGKey(i))
        actor_changed.append(
            any(
                bool(jnp.any(a != b))
                for a, b in zip(
                    jax.tree_util.tree_leaves(previous.actor_params),
                    jax.tree_util.tree_leaves(state.actor_params),
                    strict=True,
                )
            )
        )
        temperature_changed.append(bool(previous.log_temperature != state.log_temperature))
        stats_moved = jax.tree_util.tree_leaves(state.critic_batch_stats)
        assert int(max(int(s.max()) for s in stats_moved if s.dtype == jnp.int32)) == i + 1
    assert actor_changed == [False, False, True, False, False, True]
    assert temperature_changed == actor_changed


@pytest.mark.parametrize(
    "target, per_dim, loss, rises",
    [
        # Official: the initial running cost (about 3 per dimension) is below 4|A|, i.e. the
        # entropy proxy is above its target, so alpha falls, with either form of the loss.
        ("running_cost", "auto", "log_alpha", False),
        ("running_cost", "auto", "alpha", False),
        # The full bound (about -0.65 nats per dimension at the start) below a target of +5.
        ("bound", 5.0, "log_alpha", True),
        ("bound", 5.0, "alpha", True),
    ],
)
def test_temperature_target_direction(target, per_dim, loss, rises):
    overrides = {
        **SMALL_DIME,
        "temperature_target": target,
        "target_entropy_per_dim": per_dim,
        "temperature_loss": loss,
    }
    agent, buffer = _agent("dime", overrides)
    state = agent.init(jax.random.PRNGKey(0))
    state, metrics = agent.update(
        state, buffer.sample(np.random.default_rng(0), 32, 3), jax.random.PRNGKey(1)
    )
    assert (float(metrics["temperature"]) > 1.0) == rises


@pytest.mark.parametrize("q_reduce", ["mean", "min"])
def test_distributional_target_on_hand_computed_transitions(q_reduce):
    """The soft distributional target r + gamma (1 - terminated) (z - alpha cost) on a support
    of 5 atoms {-2, -1, 0, 1, 2}, with critics whose output ignores the input (zero last kernel):
    critic 0 puts its mass on z = 1, critic 1 on z = -1. With r = 0.5, gamma = 0.5, alpha = 1:
    cost 0 moves critic 0's mass to 1.0 and critic 1's to 0.0; cost 1 moves them to 0.5 and
    -0.5 (each split evenly between neighbours); a terminal transition puts it at r = 0.5.
    ``mean`` averages the critics' projections; ``min`` takes the critic with the lower
    expected next value (critic 1)."""
    critic = CrossQCritic(1, 1, hidden_dims=(4,), num_critics=2, num_atoms=5, v_min=-2,
                          v_max=2, entropy_coef=0.0, q_reduce=q_reduce)  # fmt: skip
    params, stats = critic.init(jax.random.PRNGKey(0))
    logits = np.array([[0.0, 0.0, 0.0, 30.0, 0.0], [0.0, 30.0, 0.0, 0.0, 0.0]], np.float32)
    last = params["critics"]["Dense_1"]
    params["critics"]["Dense_1"] = {"kernel": jnp.zeros_like(last["kernel"]), "bias": logits}
    batch = Batch(
        obs=np.zeros((3, 1), np.float32),
        action=np.zeros((3, 1), np.float32),
        reward=np.full(3, 0.5, np.float32),
        next_obs=np.zeros((3, 1), np.float32),
        terminated=np.array([0.0, 0.0, 1.0], np.float32),
        truncated=np.zeros(3, np.float32),
    )
    cost = jnp.array([0.0, 1.0, 0.0])
    loss, (_, metrics) = critic.loss(params, stats, batch, jnp.zeros((3, 1)), cost, 1.0, 0.5)
    by_critic = {  # each critic's projected next distribution, per transition
        0: [[0, 0, 0, 1, 0], [0, 0, 0.5, 0.5, 0], [0, 0, 0.5, 0.5, 0]],
        1: [[0, 0, 1, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5, 0]],
    }
    if q_reduce == "mean":
        target = (np.array(by_critic[0]) + np.array(by_critic[1])) / 2
    else:
        target = np.array(by_critic[1])
    log_p = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))  # [critics, atoms]
    expected = sum(np.mean(-np.sum(target * log_p[c], axis=-1)) for c in range(2))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["next_q_mean"]) == pytest.approx(0.0, abs=1e-6)  # (1 + -1) / 2


def test_batch_renorm_statistics_come_from_the_joint_batch_of_s_and_s_next():
    """CrossQ evaluates (s, a) and (s', a') as one batch: the first layer's running statistics
    move towards the joint batch's mean and (population) variance, not the s half's. Here every
    s is 1 and every a 0, every s' is 5 and every a' 2: joint means (3, 1), variances (4, 1); the
    s half alone would give means (1, 0) and variances 0."""
    critic = CrossQCritic(1, 1, hidden_dims=(4,), num_critics=2, num_atoms=5, v_min=-2, v_max=2)
    params, stats = critic.init(jax.random.PRNGKey(0))
    size = 4
    batch = Batch(
        obs=np.ones((size, 1), np.float32),
        action=np.zeros((size, 1), np.float32),
        reward=np.zeros(size, np.float32),
        next_obs=np.full((size, 1), 5.0, np.float32),
        terminated=np.zeros(size, np.float32),
        truncated=np.zeros(size, np.float32),
    )
    next_action, cost = jnp.full((size, 1), 2.0), jnp.zeros(size)
    _, (moved, _) = critic.loss(params, stats, batch, next_action, cost, 1.0, 0.99)
    first = moved["critics"]["BatchRenorm_0"]
    momentum = critic.momentum  # running <- momentum * running + (1 - momentum) * batch
    for member in range(critic.num_critics):
        np.testing.assert_allclose(first["mean"][member], (1 - momentum) * np.array([3.0, 1.0]),
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(
            first["var"][member], momentum * 1.0 + (1 - momentum) * np.array([4.0, 1.0]), rtol=1e-5
        )


# --- DIME's actor loss: its sign, and the critic in evaluation mode -----------------------------


def _dime_pieces():
    """A small DIME agent on Pendulum, its state after init, a replay batch, and the policy and
    critic objects built as ``dime.make`` builds them (to write the actor loss out by hand)."""
    config = resolve_config("dime", "Pendulum-v1", overrides=SMALL_DIME).agent
    agent, buffer = _agent("dime", SMALL_DIME)
    policy, critic = make_policy(config, action_dim=1), config.critic(3, 1)
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 32, 1)
    return agent, state, jax.tree_util.tree_map(lambda x: x[0], batch), policy, critic


def _gradient_of(fn, params):
    return jax.jit(jax.grad(fn))(params)


def _combine(a, b, scale_a, scale_b):
    return jax.tree_util.tree_map(lambda x, y: scale_a * x + scale_b * y, a, b)


def _assert_trees_close(actual, expected, rtol, atol):
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), actual, expected
    )


def _max_difference(a, b):
    return max(
        float(jnp.abs(x - y).max())
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_actor_loss_raises_q_and_the_entropy_bound(temperature):
    """The agent's actor gradient is that of ``mean[-Q(s, a) - alpha * bound]`` with ``a`` and
    the bound from the same reparameterised chain (Q: mean of the critics, evaluation mode): a
    step against it raises Q where alpha is negligible and raises the bound where Q is flat."""
    agent, state, batch, policy, critic = _dime_pieces()
    state = state.replace(log_temperature=jnp.log(jnp.float32(temperature)))
    key = jax.random.PRNGKey(7)
    grads, _ = agent.phases["actor step (chain+backprop)"](state, batch, key)

    def mean_q(actor_params, critic_params=state.critic_params):
        action = policy.sample(actor_params, batch.obs, key).action
        q = critic.q_values(critic_params, state.critic_batch_stats, batch.obs, action)
        return jnp.mean(critic.reduce(q))

    def mean_bound(actor_params):
        return jnp.mean(policy.sample(actor_params, batch.obs, key).entropy_bound)

    grad_q = _gradient_of(mean_q, state.actor_params)
    grad_bound = _gradient_of(mean_bound, state.actor_params)
    # float32 through the chain and the critic: the two ways of computing it agree to 1e-4.
    _assert_trees_close(grads, _combine(grad_q, grad_bound, -1.0, -temperature), 1e-3, 1e-6)

    def descend(gradients, lr):
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, state.actor_params, gradients)

    # Alpha negligible: a small step against the agent's gradient raises the critic's Q ...
    tiny = state.replace(log_temperature=jnp.log(jnp.float32(1e-8)))
    q_grads, _ = agent.phases["actor step (chain+backprop)"](tiny, batch, key)
    assert float(mean_q(descend(q_grads, 1e-2))) > float(mean_q(state.actor_params))
    # ... and with a critic that ignores the action (every weight zeroed) it raises the bound.
    flat_critic = jax.tree_util.tree_map(jnp.zeros_like, state.critic_params)
    flat = state.replace(critic_params=flat_critic)
    bound_grads, _ = agent.phases["actor step (chain+backprop)"](flat, batch, key)
    assert float(mean_bound(descend(bound_grads, 1e-2))) > float(mean_bound(state.actor_params))


def test_actor_loss_uses_the_critic_in_evaluation_mode():
    """Inside the actor loss the critic normalises with BatchRenorm's running statistics (not the
    actor batch's own), and an update's actor step leaves those statistics as its critic step
    made them. During the warm-up, training mode is plain batch normalisation, whose statistics
    of this batch (Pendulum observations, the policy's actions) are far from the initial running
    mean 0 and variance 1, so the two modes give different gradients."""
    agent, state, batch, policy, critic = _dime_pieces()
    key = jax.random.PRNGKey(7)
    grads, _ = agent.phases["actor step (chain+backprop)"](state, batch, key)
    temperature = jnp.exp(state.log_temperature)

    def actor_loss(actor_params, train):
        sample = policy.sample(actor_params, batch.obs, key)
        variables = {"params": state.critic_params, "batch_stats": state.critic_batch_stats}
        outputs, _ = critic.module.apply(
            variables, batch.obs, sample.action, train=train, mutable=["batch_stats"]
        )
        q = critic.reduce(critic._values(outputs))
        return jnp.mean(-q + temperature * sample.cost)

    evaluation = _gradient_of(functools.partial(actor_loss, train=False), state.actor_params)
    training = _gradient_of(functools.partial(actor_loss, train=True), state.actor_params)
    _assert_trees_close(grads, evaluation, 1e-3, 1e-6)
    assert _max_difference(training, evaluation) > 100 * _max_difference(grads, evaluation)

    # The same update with and without its actor step (the step counter at the third critic
    # step of a policy-delay cycle, or at the first): the critic step runs first with the same
    # key, so the running statistics must be identical, while the actor has moved.
    replay = jax.tree_util.tree_map(lambda x: x[None], batch)
    third = state.replace(step=jnp.asarray(2, state.step.dtype))
    with_actor, _ = agent.update(third, replay, jax.random.PRNGKey(3))
    without_actor, _ = agent.update(state, replay, jax.random.PRNGKey(3))
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        with_actor.critic_batch_stats,
        without_actor.critic_batch_stats,
    )
    assert _max_difference(with_actor.actor_params, without_actor.actor_params) > 0
