"""Analytic tests of the diffusion core: schedule, network shapes, samplers, QNE, log-probability.

Ground truth comes from Gaussian policies, whose noised marginals and exact noise predictors are
closed form (``diffmaxent.diffusion.gaussian_eps_fn``). Seeds are fixed; every tolerance says why.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import truncnorm

from diffmaxent.diffusion import (
    LOG_SNR_MAX,
    LOG_SNR_MIN,
    T_MAX,
    T_MIN,
    NoiseNet,
    alpha_bar,
    clip_denoiser,
    ddim_sample,
    ddpm_sample,
    discrete_betas,
    discrete_log_snr_grid,
    gaussian_eps_fn,
    gaussian_log_prob,
    log_prob,
    log_snr,
    log_snr_grid,
    noise_target,
    quadrature,
    sample,
    sample_grid_log_snr,
    time_from_log_snr,
    time_grid,
    truncated_candidate_noise,
)
from diffmaxent.diffusion.targets import truncated_standard_normal

sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731

# --- schedule -------------------------------------------------------------------------------------


def test_schedule_end_points_and_monotonicity():
    t = jnp.linspace(T_MIN, T_MAX, 2001)
    lam = np.asarray(log_snr(t))
    assert np.all(np.diff(lam) < 0)
    # Values from the official schedule (notes, rounded there): abar(1e-3) = 0.99996 (exactly
    # 0.9999587), log-SNR +10.09 / -9.56.
    assert float(alpha_bar(jnp.float32(T_MIN))) == pytest.approx(0.99996, abs=5e-6)
    assert lam[0] == pytest.approx(10.09, abs=0.01)
    assert lam[-1] == pytest.approx(-9.56, abs=0.01)
    # The float64 module constants agree with the float32 functions to float32 rounding.
    assert lam[0] == pytest.approx(LOG_SNR_MAX, abs=1e-4)
    assert lam[-1] == pytest.approx(LOG_SNR_MIN, abs=1e-4)
    # abar = sigmoid(lambda): two independent float32 formulas, so agreement to ~1e-6.
    np.testing.assert_allclose(sigmoid(lam.astype(np.float64)), alpha_bar(t), atol=2e-6)


def test_time_log_snr_round_trip():
    t = jnp.linspace(T_MIN, T_MAX, 2001)
    # float32: t has ~1e-7 resolution; 1e-6 leaves room for the trigonometric rounding.
    np.testing.assert_allclose(time_from_log_snr(log_snr(t)), t, atol=1e-6)
    lam = jnp.linspace(LOG_SNR_MIN, LOG_SNR_MAX, 2001)
    # d lambda / dt is up to ~1e3 near t = T_MIN, so t's rounding shows up as ~1e-4 in lambda.
    np.testing.assert_allclose(log_snr(time_from_log_snr(lam)), lam, atol=2e-4)


def test_log_snr_grids():
    np.testing.assert_allclose(log_snr_grid(20, "time"), log_snr(time_grid(20)), rtol=1e-6)
    grid = np.asarray(log_snr_grid(20, "log_snr"))
    np.testing.assert_allclose(np.diff(grid), (LOG_SNR_MIN - LOG_SNR_MAX) / 20, rtol=1e-4)
    with pytest.raises(ValueError):
        log_snr_grid(20, "cosine")


def test_discrete_schedules():
    # jaxrl5's vp_beta_schedule (QSM, Diffusion-QL), written per step: 1 - exp(-b_min / T -
    # (b_max - b_min) (2t - 1) / (2 T^2)) with b_min 0.1, b_max 10.
    t = np.arange(1, 6)
    vp = -np.expm1(-0.1 / 5 - 9.9 * (2 * t - 1) / 50)
    np.testing.assert_allclose(discrete_betas(5, "vp"), vp, rtol=1e-12)
    grid = np.asarray(discrete_log_snr_grid(5, "vp"))
    assert grid.shape == (6,) and grid[0] == np.inf and np.all(np.diff(grid) < 0)
    # The grid's levels are the cumulative products of (1 - beta): abar_1 = 0.804, abar_5 = 0.0064.
    np.testing.assert_allclose(sigmoid(grid[1:].astype(np.float64)), np.cumprod(1 - vp), rtol=1e-6)
    np.testing.assert_array_equal(log_snr_grid(5, "vp"), grid)
    # "linear" at T = 1000 is DDPM's linspace(1e-4, 0.02, 1000) up to its continuous-time form.
    ddpm = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(np.cumprod(1 - discrete_betas(1000, "linear")), ddpm, atol=1e-3)
    # ... and stays a valid schedule for few steps, where scaling the betas by 1000 / T would not.
    betas = discrete_betas(5, "linear")
    assert np.all((betas > 0) & (betas < 1)) and np.prod(1 - betas) < 1e-4
    with pytest.raises(ValueError):
        discrete_betas(5, "cosine")


def test_training_levels_are_uniform_on_the_noisy_grid_levels():
    grid = np.asarray(log_snr_grid(5, "vp"))
    lam = np.asarray(sample_grid_log_snr(jax.random.key(0), (50_000,), 5, "vp"))
    levels, counts = np.unique(lam, return_counts=True)
    np.testing.assert_array_equal(np.sort(levels), np.sort(grid[1:]))  # never the clean level
    # Each level has probability 1/5: binomial std of a share is 0.0018; 0.01 is over 5 std.
    np.testing.assert_allclose(counts / lam.size, 0.2, atol=0.01)


# --- network --------------------------------------------------------------------------------------

SMALL_NET = {"action_dim": 3, "hidden_dims": (32, 32), "cond_dims": (16, 16)}


def test_noise_net_broadcasts_state_and_log_snr_over_leading_dims():
    net = NoiseNet(**SMALL_NET)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((4, 5)).astype(np.float32)
    x = rng.standard_normal((4, 6, 7, 3)).astype(np.float32)
    lam = rng.uniform(-9.0, 10.0, (4, 6, 7)).astype(np.float32)
    params = jax.jit(net.init)(jax.random.key(0), obs, x[:, 0, 0], lam[:, 0, 0])

    @jax.jit  # one compile for all the variants (eager flax dispatch is slow on CPU)
    def variants(params, obs, x, lam):
        obs_rep = jnp.broadcast_to(obs[:, None, None, :], (4, 6, 7, 5)).reshape(-1, 5)
        x2 = x[:, 0, 0]
        return (
            net.apply(params, obs, x, lam),
            net.apply(params, obs_rep, x.reshape(-1, 3), lam.reshape(-1)),
            net.apply(params, obs, x2, lam[:, 0, 0]),
            net.apply(params, obs, x2, lam[:, :1, 0]),
            net.apply(params, obs, x2, jnp.float32(2.0)),
            net.apply(params, obs, x2, jnp.full((4,), 2.0)),
            net.apply(params, obs, x, jnp.broadcast_to(lam[:1, :1, :], (4, 6, 7))),
            net.apply(params, obs, x, lam[:1, :1, :]),
        )

    out, flat, per_row, column, scalar, full, levels, compact = variants(params, obs, x, lam)
    assert out.shape == (4, 6, 7, 3)
    # Same numbers as the explicit flattened batch with the state repeated (float32 rounding).
    np.testing.assert_allclose(out.reshape(-1, 3), flat, rtol=1e-5, atol=1e-6)
    # log_snr as [B], [B, 1] or a scalar; and one level per node passed compactly ([1, 1, T],
    # as the samplers and the log-prob do) or fully broadcast. The factorised first layer sums in
    # a different order in each case, hence float32-rounding tolerances.
    np.testing.assert_allclose(per_row, column, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scalar, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(levels, compact, rtol=1e-5, atol=1e-6)


def test_noise_net_layer_norm_option():
    args = (jax.random.key(0), np.ones((2, 5)), np.ones((2, 3)), np.zeros((2,)))
    # Shapes only: eval_shape traces init without compiling it.
    plain = jax.eval_shape(NoiseNet(**SMALL_NET).init, *args)
    normed = jax.eval_shape(NoiseNet(**SMALL_NET, layer_norm=True).init, *args)
    count = lambda p: sum(v.size for v in jax.tree_util.tree_leaves(p))  # noqa: E731
    # One LayerNorm (scale and bias) per hidden layer of the main MLP: 2 * (32 + 32) params.
    assert count(normed) - count(plain) == 2 * (32 + 32)
    assert "LayerNorm_0" in str(jax.tree_util.tree_structure(normed))


# --- samplers -------------------------------------------------------------------------------------

MEAN = jnp.array([0.2, -0.3])
STD = jnp.array([0.5, 0.3])
NUM_DRAWS = 16384


def _target_moments():
    """The samplers stop at t = T_MIN, so the target is the Gaussian noised to LOG_SNR_MAX."""
    abar = sigmoid(LOG_SNR_MAX)
    return math.sqrt(abar) * np.asarray(MEAN), np.sqrt(abar * np.asarray(STD) ** 2 + 1 - abar)


@pytest.mark.parametrize(
    "sampler,kwargs",
    [
        # 200 steps: DDIM's first-order error on the time grid is ~1% at these stds.
        ("ddim", {"num_steps": 200}),
        # 100 steps: DDPM's (sigma^2 = beta) error is ~1.5% at std 0.3.
        ("ddpm", {"num_steps": 100, "clip_x0": False}),
        # 20 steps suffice for the second-order solver on the log-SNR grid (~1-2%).
        ("dpm_solver_2m", {"num_steps": 20}),
    ],
)
def test_samplers_match_gaussian_moments(sampler, kwargs):
    eps_fn = gaussian_eps_fn(MEAN, STD)
    draw = jax.jit(
        functools.partial(sample, eps_fn, shape=(NUM_DRAWS, 2), sampler=sampler, **kwargs)
    )
    x = np.asarray(draw(jax.random.key(0)))
    mean, std = _target_moments()
    # Mean: standard error is std / 128 <= 0.004; 0.015 allows ~4 SE.
    np.testing.assert_allclose(x.mean(0), mean, atol=0.015)
    # Std: sampling error 1 / sqrt(2 n) = 0.55%; plus the discretisation errors noted above.
    np.testing.assert_allclose(x.std(0) / std, 1.0, atol=0.035)


def test_ddim_is_deterministic_and_under_disperses_at_twenty_steps():
    eps_fn = gaussian_eps_fn(MEAN, STD)
    draw = jax.jit(functools.partial(ddim_sample, eps_fn, shape=(NUM_DRAWS, 2), num_steps=20))
    x1, x2 = draw(jax.random.key(1)), draw(jax.random.key(1))
    np.testing.assert_array_equal(x1, x2)
    # Recorded discretisation error of DDIM with the official 20-step time grid: the exact
    # linear-Gaussian recursion predicts std ratios 0.927 / 0.895 for std 0.5 / 0.3.
    ratio = np.asarray(x1).std(0) / _target_moments()[1]
    np.testing.assert_allclose(ratio, [0.927, 0.895], atol=0.02)


def test_ddpm_is_stochastic_and_clipping_bounds_the_clean_prediction():
    # A policy centred outside the box: x0 clipping must pull the samples back to [-1, 1].
    eps_fn = gaussian_eps_fn(jnp.array([2.5, -0.2]), jnp.array([0.3, 0.3]))
    x = jnp.linspace(-3.0, 3.0, 2 * 64).reshape(64, 2)
    lam = jnp.linspace(LOG_SNR_MIN, LOG_SNR_MAX, 64)
    eps = clip_denoiser(eps_fn)(x, lam)
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(lam))[:, None], jnp.sqrt(jax.nn.sigmoid(-lam))[:, None]
    x0 = (x - sigma * eps) / alpha
    assert float(jnp.max(jnp.abs(x0))) <= 1.0 + 1e-4  # float32 rounding of the round trip

    draw = jax.jit(functools.partial(ddpm_sample, eps_fn, shape=(2048, 2), num_steps=20))
    a, b = np.asarray(draw(jax.random.key(0))), np.asarray(draw(jax.random.key(1)))
    assert not np.allclose(a, b)
    # The last step adds no noise: its output is the posterior mean 0.995 x0c + 0.005 x_t (20-step
    # time grid), so the samples stay within 0.05 of the box.
    assert np.abs(a).max() < 1.05
    assert a[:, 0].mean() > 0.9  # mass piles up at the upper bound of the first dimension


@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddpm_on_a_discrete_schedule_is_ho_et_al_ancestral_sampling(clip_sample):
    """On the vp grid a step is Ho et al.'s x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) /
    sqrt(1 - beta_t) + sqrt(beta_t) z (no z on the last step), as in jaxrl5's ddpm_sampler, whose
    clip_sampler clips x after every step."""
    eps_fn = gaussian_eps_fn(jnp.array([0.9, -0.3]), jnp.array([0.2, 0.4]))
    key, shape, steps = jax.random.key(4), (256, 2), 5
    out = ddpm_sample(
        eps_fn, key, shape, num_steps=steps, clip_x0=False, spacing="vp", clip_sample=clip_sample
    )
    betas = discrete_betas(steps, "vp")
    abar = np.cumprod(1 - betas)
    lams = np.asarray(discrete_log_snr_grid(steps, "vp"))
    init_key, noise_key = jax.random.split(key)  # the sampler's own key use
    x = np.asarray(jax.random.normal(init_key, shape), np.float64)
    for i, step_key in enumerate(jax.random.split(noise_key, steps)):
        t = steps - 1 - i  # 0-based index of the level being denoised
        eps = np.asarray(eps_fn(jnp.asarray(x, jnp.float32), jnp.full((1,), lams[t + 1])))
        x = (x - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(1 - betas[t])
        if t > 0:
            x = x + np.sqrt(betas[t]) * np.asarray(jax.random.normal(step_key, shape))
        if clip_sample:
            x = np.clip(x, -1.0, 1.0)
    # Float32 rounding of the two forms (posterior mean vs Ho et al.'s), amplified by
    # 1 / sqrt(1 - beta) over 5 steps.
    np.testing.assert_allclose(out, x, atol=2e-4)
    if clip_sample:
        assert np.abs(np.asarray(out)).max() <= 1.0


def test_probability_flow_samplers_end_on_the_clean_prediction_of_a_discrete_grid():
    eps_fn = gaussian_eps_fn(MEAN, STD)
    key = jax.random.key(5)
    x_t = jax.random.normal(key, (64, 2))
    lam_1 = discrete_log_snr_grid(1, "vp")[1]
    clean = (x_t - jnp.sqrt(jax.nn.sigmoid(-lam_1)) * eps_fn(x_t, lam_1)) / jnp.sqrt(
        jax.nn.sigmoid(lam_1)
    )
    for sampler in ("ddim", "dpm_solver_2m"):
        one_step = sample(eps_fn, key, (64, 2), sampler=sampler, num_steps=1, spacing="vp")
        np.testing.assert_allclose(one_step, clean, rtol=1e-5, atol=1e-6)
        five = sample(eps_fn, key, (64, 2), sampler=sampler, num_steps=5, spacing="linear")
        assert np.all(np.isfinite(five))


def test_sampler_selector():
    eps_fn = gaussian_eps_fn(MEAN, STD)
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        sample(eps_fn, key, (8, 2)), ddim_sample(eps_fn, key, (8, 2), num_steps=20)
    )
    np.testing.assert_array_equal(
        sample(eps_fn, key, (8, 2), sampler="ddpm"), ddpm_sample(eps_fn, key, (8, 2), clip_x0=True)
    )
    with pytest.raises(ValueError):
        sample(eps_fn, key, (8, 2), sampler="euler")


# --- Q-weighted noise estimation ------------------------------------------------------------------

# Q(a) = -0.5 sum_i P_i (a_i - c_i)^2 with P = beta / sd^2, so exp(Q / beta) = N(c, diag(sd^2)).
Q_CENTRE = np.array([0.1, -0.2])
Q_SD = np.array([0.2, 0.3])
BETA = 0.5
LEVELS = np.array([-8.0, -4.0, 0.0, 4.0, 8.0])


def _quadratic_q(obs, actions):
    del obs
    precision = jnp.asarray(BETA / Q_SD**2, jnp.float32)
    return -0.5 * jnp.sum(precision * (actions - jnp.asarray(Q_CENTRE, jnp.float32)) ** 2, -1)


def _exact_noise_target(noisy, lam):
    """``-E[n | a_t]`` for the target N(c, sd^2) restricted to the box, in float64.

    Per dimension the reverse transition (Lemma 2) is the product of N(c, sd^2) and
    N(a_t / alpha, sigma^2 / alpha^2), i.e. a Gaussian truncated to [-1, 1]; its mean gives
    E[a0 | a_t] and n = (alpha a0 - a_t) / sigma."""
    abar = sigmoid(lam)[..., None]
    prop_mean, prop_var = noisy / np.sqrt(abar), (1 - abar) / abar
    post_var = 1.0 / (1.0 / Q_SD**2 + 1.0 / prop_var)
    post_mean = post_var * (Q_CENTRE / Q_SD**2 + prop_mean / prop_var)
    s = np.sqrt(post_var)
    clean_mean = truncnorm.mean((-1 - post_mean) / s, (1 - post_mean) / s, loc=post_mean, scale=s)
    return -(np.sqrt(abar) * clean_mean - noisy) / np.sqrt(1 - abar)


def _noised_target_samples(num):
    rng = np.random.default_rng(0)
    lo, hi = (-1 - Q_CENTRE) / Q_SD, (1 - Q_CENTRE) / Q_SD
    clean = truncnorm.rvs(
        lo, hi, loc=Q_CENTRE, scale=Q_SD, size=(len(LEVELS), num, 2), random_state=rng
    )
    abar = sigmoid(LEVELS)[:, None, None]
    noisy = np.sqrt(abar) * clean + np.sqrt(1 - abar) * rng.standard_normal(clean.shape)
    return noisy, np.broadcast_to(LEVELS[:, None], noisy.shape[:-1])


@functools.cache
def _noised_cases():
    """256 noisy actions per level (from the box-truncated target), with their exact targets."""
    noisy, lam = _noised_target_samples(256)
    return noisy, lam, _exact_noise_target(noisy, lam)


@functools.cache
def _estimate(score_target, num_samples):
    noisy, lam, _ = _noised_cases()
    fn = jax.jit(
        functools.partial(
            noise_target,
            q_fn=_quadratic_q,
            temperature=BETA,
            num_samples=num_samples,
            score_target=score_target,
        )
    )
    obs = jnp.zeros((*noisy.shape[:-1], 1))
    target, metrics = fn(jax.random.key(1), obs, jnp.asarray(noisy, jnp.float32), jnp.asarray(lam))
    return np.asarray(target, np.float64), metrics


def test_qne_matches_exact_noise_target_and_error_shrinks_with_k():
    noisy, lam, exact = _noised_cases()

    # Away from the box edge the truncated target is the Gaussian closed form
    # -sigma grad log p_t(a_t) = sigma (a_t - alpha c) / (abar sd^2 + 1 - abar): the median gap is
    # <= 2.4e-3 at every level (measured). Near the edge at high SNR the box matters (gaps up to
    # 0.5 for 7 of 256 rows at lam = 4), which is why the reference is the truncated form.
    abar = sigmoid(lam)[..., None]
    closed = np.sqrt(1 - abar) * (noisy - np.sqrt(abar) * Q_CENTRE) / (abar * Q_SD**2 + 1 - abar)
    assert np.all(np.median(np.abs(closed - exact).max(-1), axis=-1) < 5e-3)

    mse = {}
    for k in (16, 1024):
        target, metrics = _estimate("qne", k)
        mse[k] = np.mean(np.sum((target - exact) ** 2, -1), axis=-1)  # per level
        assert 1.0 <= float(metrics["ess"]) <= k
    # Measured MSE at K = 1024: 1e-7 (lam -8) ... 2.6e-3 (lam 4); at high SNR the weights are
    # nearly uniform and the error is ~ A / K = 2e-3. 0.01 leaves a 4x margin; the targets' mean
    # squares are 0.01 to 2.
    assert np.all(mse[1024] < 0.01), mse[1024]
    # Self-normalised importance sampling: error ~ 1/K, so 64x predicted (58x to 103x measured);
    # require 16x at every level.
    assert np.all(mse[16] > 16 * mse[1024]), mse[16] / mse[1024]


def test_idem_and_qsm_targets():
    noisy, lam, exact = _noised_cases()
    err = lambda t: np.mean(np.sum((t - exact) ** 2, -1), axis=-1)  # noqa: E731
    qne, idem, qsm = (_estimate(name, 1024)[0] for name in ("qne", "idem", "qsm"))
    # QSM is exactly -sigma grad Q(a_t) / beta.
    abar = sigmoid(lam)[..., None]
    grad_q = -(BETA / Q_SD**2) * (noisy - Q_CENTRE)
    np.testing.assert_allclose(qsm, -np.sqrt(1 - abar) * grad_q / BETA, rtol=1e-4, atol=1e-5)
    e_qne, e_idem, e_qsm = err(qne), err(idem), err(qsm)
    # Near the data (lam = 8) iDEM and QSM are accurate (measured 8e-8 and 6e-7) ...
    assert e_idem[-1] < 1e-5 and e_qsm[-1] < 1e-5
    # ... while at lam <= 0 both are far worse than QNE (1/alpha and the wrong marginal): the
    # paper's argument for QNE. Measured ratios >= 268 (iDEM) and >= 4.5e5 (QSM).
    assert np.all(e_idem[:3] > 100 * e_qne[:3]) and np.all(e_qsm[:3] > 100 * e_qne[:3])


def test_truncated_normal_is_exact_in_far_tails():
    draw = jax.jit(functools.partial(truncated_standard_normal, shape=(4, 50_000)))
    lower = np.array([-1.0, 2.0, -14.0, 8.0], np.float32)[:, None]
    upper = np.array([2.0, 3.0, -12.5, 9.0], np.float32)[:, None]
    x = np.asarray(draw(jax.random.key(0), lower, upper), np.float64)
    assert np.all((lower <= x) & (x <= upper))
    # Compare with scipy: 50k draws per interval; allow 5 standard errors of the mean.
    reference = truncnorm.mean(lower[:, 0], upper[:, 0])
    standard_error = truncnorm.std(lower[:, 0], upper[:, 0]) / math.sqrt(x.shape[1])
    assert np.all(np.abs(x.mean(1) - reference) < 5 * standard_error)

    # a_t = 5 at log-SNR 8 (far outside the box): the candidates must sit at the near edge a0 = +1,
    # where jax.random.truncated_normal returns the far edge a0 = -1. Row 2 is ordinary input.
    noisy = np.array([[5.0, 5.0], [0.3, -2.5]], np.float32)
    candidates = jax.jit(truncated_candidate_noise, static_argnums=3)
    noise, clean, nan_mask = (
        np.asarray(v) for v in candidates(jax.random.key(0), noisy, np.array([8.0, 0.0]), 64)
    )
    assert np.all(np.isfinite(noise)) and not nan_mask.any()
    assert clean[0].min() > 0.99
    assert np.abs(clean).max() <= 1.0


# --- log-probability ------------------------------------------------------------------------------


def _expected_integrand(lam, std):
    """Policy-averaged integrand per dimension for N(mu, std^2):
    E_a E_eps [abar - (eps - eps*)^2] = abar (1 - abar) (1 - std^2) / (abar std^2 + 1 - abar)."""
    abar = sigmoid(lam)
    return abar * (1 - abar) * (1 - std**2) / (abar * std**2 + 1 - abar)


def _expected_estimate(rule, num_levels, std):
    lam, weights = (np.asarray(v, np.float64) for v in quadrature(rule, num_levels))
    value = -0.5 * math.log(2 * math.pi * math.e) + 0.5 * np.sum(
        weights * _expected_integrand(lam, std)
    )
    if rule == "gauss_legendre":  # prior term averaged over N(0, std^2): E[a^2] - 1 = std^2 - 1
        value -= 0.5 * sigmoid(LOG_SNR_MIN) * (std**2 - 1)
    return value


def _entropy_per_dim(std):
    return 0.5 * math.log(2 * math.pi * math.e * std**2)


def test_quadrature_rules_on_the_exact_integrand():
    for std in (1.0, 0.3, 0.1, 0.05):
        # Default: 12 Gauss-Legendre nodes. The error is the dropped data term (0.008 at std
        # 0.05) plus < 0.003 of quadrature error.
        error = _expected_estimate("gauss_legendre", None, std) + _entropy_per_dim(std)
        assert abs(error) < 0.012, (std, error)
    for std in (0.3, 0.05, 0.02):
        # With many nodes only the data term beyond LOG_SNR_MAX is left, and it equals the
        # docstring's formula -1/2 log(abar_hi + (1 - abar_hi) / std^2) (float32 nodes: 2e-4).
        error = _expected_estimate("gauss_legendre", 64, std) + _entropy_per_dim(std)
        abar_hi = sigmoid(LOG_SNR_MAX)
        assert error == pytest.approx(-0.5 * math.log(abar_hi + (1 - abar_hi) / std**2), abs=2e-4)
    # The paper's rule (T = 20): -0.09 and -0.82 nats per dimension (notes' table: -0.308 vs
    # -0.215 and 0.757 vs 1.577).
    assert _expected_estimate("rectangle", 20, 0.3) + _entropy_per_dim(0.3) == pytest.approx(
        -0.093, abs=0.005
    )
    assert _expected_estimate("rectangle", 20, 0.05) + _entropy_per_dim(0.05) == pytest.approx(
        -0.820, abs=0.005
    )


@pytest.mark.parametrize("std", [1.0, 0.3, 0.05])
def test_log_prob_estimator_with_exact_denoiser(std):
    mean = jnp.array([0.2, -0.3])
    eps_fn = gaussian_eps_fn(mean, std)
    actions = mean + std * jax.random.normal(jax.random.key(0), (8192, 2))
    exact = gaussian_log_prob(actions, mean, std)
    estimate = jax.jit(functools.partial(log_prob, eps_fn))(jax.random.key(1), actions)
    error = np.asarray(estimate - exact) / 2  # per dimension
    # Default settings (12 Gauss-Legendre nodes, 8 samples). Per-action std of the error is
    # 0.7 / 0.6 / 0.35 nats per dim, so the mean over 8192 actions has SE <= 0.008; the expected
    # bias is <= 0.01 (previous test). 0.035 = bias + 3 SE.
    assert abs(error.mean()) < 0.035, error.mean()


@pytest.mark.parametrize("std", [1.0, 0.3, 0.05])
def test_log_prob_estimate_is_right_per_action(std):
    """Each action's estimate, not only the mean over actions: with 128 samples per level every
    action's estimate lies near its exact log-density (measured: 99% of actions within 0.16-0.19
    nats per dim) and the estimates follow the exact values across actions (correlation 0.994;
    the same estimates shuffled across actions, which keep the mean: 0.07)."""
    mean = jnp.array([0.2, -0.3])
    eps_fn = gaussian_eps_fn(mean, std)
    actions = mean + std * jax.random.normal(jax.random.key(5), (512, 2))
    exact = np.asarray(gaussian_log_prob(actions, mean, std))
    estimate = jax.jit(
        functools.partial(log_prob, eps_fn, num_levels=12, num_samples=128, control_variate=True)
    )(jax.random.key(6), actions)
    error = (np.asarray(estimate) - exact) / 2  # per dimension
    assert np.percentile(np.abs(error), 99) < 0.3, np.percentile(np.abs(error), 99)
    assert np.corrcoef(np.asarray(estimate), exact)[0, 1] > 0.98


def test_paper_rectangle_rule_is_biased_for_narrow_policies():
    std, mean = 0.05, jnp.array([0.2, -0.3])
    eps_fn = gaussian_eps_fn(mean, std)
    actions = mean + std * jax.random.normal(jax.random.key(0), (1024, 2))
    exact = np.asarray(gaussian_log_prob(actions, mean, std))
    paper = functools.partial(
        log_prob, eps_fn, logprob_rule="rectangle", num_levels=20, num_samples=50
    )
    rect = (np.asarray(jax.jit(paper)(jax.random.key(1), actions)) - exact).mean() / 2
    default = (
        np.asarray(jax.jit(functools.partial(log_prob, eps_fn))(jax.random.key(1), actions)) - exact
    ).mean() / 2
    # Expected -0.82 (SE 0.01 over 1024 actions): the paper's 1000-pass rule overestimates the
    # entropy by > 0.5 nats per dimension; the 96-pass default is within 0.05 (SE 0.01).
    assert rect < -0.5, rect
    assert abs(default) < 0.05, default


def test_log_prob_calls_the_network_once_on_all_levels():
    net = NoiseNet(action_dim=2, hidden_dims=(16, 16), cond_dims=(8, 8), layer_norm=True)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((5, 3)).astype(np.float32)
    actions = rng.uniform(-1.0, 1.0, (5, 2)).astype(np.float32)
    params = jax.jit(net.init)(jax.random.key(2), obs, actions, jnp.zeros((5,)))
    shapes = []

    def eps_fn(x, lam):
        shapes.append((x.shape, lam.shape))
        return net.apply(params, obs, x, lam)

    estimate = jax.jit(functools.partial(log_prob, eps_fn, num_levels=6, num_samples=4))
    out = estimate(jax.random.key(3), actions)
    assert out.shape == (5,) and bool(jnp.all(jnp.isfinite(out)))
    # One call; the levels arrive compact (one per node), broadcastable to [B, N, T].
    assert shapes == [((5, 4, 6, 2), (1, 1, 6))]
    # Extra leading dims of the actions are kept; antithetic pairs need an even sample count.
    eps_fn = gaussian_eps_fn(0.0, 0.5)
    estimate = jax.jit(functools.partial(log_prob, eps_fn, num_levels=6, num_samples=4))
    assert estimate(jax.random.key(4), jnp.zeros((3, 4, 2))).shape == (3, 4)
    with pytest.raises(ValueError):
        log_prob(eps_fn, jax.random.key(4), actions, antithetic=True, num_samples=3)


@pytest.mark.parametrize("std", [1.0, 0.3, 0.05])
def test_control_variate_keeps_the_mean_and_cuts_the_noise(std):
    mean = jnp.array([0.2, -0.3])
    eps_fn = gaussian_eps_fn(mean, std)
    actions = mean + std * jax.random.normal(jax.random.key(0), (4096, 2))
    exact = np.asarray(gaussian_log_prob(actions, mean, std))

    def errors(control_variate):
        estimate = functools.partial(
            log_prob, eps_fn, num_levels=8, num_samples=8, control_variate=control_variate
        )
        return (np.asarray(jax.jit(estimate)(jax.random.key(1), actions)) - exact) / 2

    plain, controlled = errors(False), errors(True)
    # Same expected bias (<= 0.02 per dim at 8 nodes); the pooled coefficient adds O(1/32768).
    # Measured SE of the means is <= 0.014 (plain) and <= 0.004 (control variate).
    assert abs(controlled.mean()) < 0.03, controlled.mean()
    assert abs(controlled.mean() - plain.mean()) < 0.05
    # Measured: sd 0.89 -> 0.27 (std 1), 0.71 -> 0.25 (0.3), 0.42 -> 0.21 (0.05).
    assert controlled.std() < 0.6 * plain.std(), (controlled.std(), plain.std())
