"""QSM: the Q-score matching target on a quadratic critic, how the agent noises replay actions and
combines its critics, the direction of a few actor updates, the critic target, actions, presets.

The critics are replaced by closed-form quadratics, ``Q_j(s, a) = offset_j - |a - shift_j -
c(s)|^2`` with ``c(s) = 0.5 tanh(s_0)``, so every gradient and target is known by hand."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmaxent import diffusion, resolve_config
from diffmaxent.agents import qsm
from diffmaxent.agents.qsm import MAXENTDP_B2, OFFICIAL_DIFFERENCES, QSMConfig
from diffmaxent.envs import make_env
from diffmaxent.types import Batch

TINY = {
    "actor_hidden_dims": (16, 16),
    "critic_hidden_dims": (16, 16),
    "critic_lr": 1e-9,  # the hand-made critics stay (numerically) where they are put
    "gamma": 0.9,
}


def centre(obs: jax.Array) -> jax.Array:
    """``c(s) = 0.5 tanh(s_0)``: ``[..., obs_dim]`` -> ``[..., 1]``."""
    return 0.5 * jnp.tanh(obs[..., :1])


class QuadraticCritic(nn.Module):
    """``Q_j(s, a) = offset_j - |a - shift_j - c(s)|^2`` for ``j < num_critics``: ``[J, B]``.
    Accepts ``EnsembleCritic``'s arguments so that it can stand in for it."""

    hidden_dims: Any = ()
    num_critics: int = 2
    activation: str = "relu"
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        offset = self.param("offset", nn.initializers.zeros, (self.num_critics,))
        shift = self.param("shift", nn.initializers.zeros, (self.num_critics,))
        gap = action[None] - shift[:, None, None] - centre(obs)[None]
        return offset[:, None] - jnp.sum(gap**2, axis=-1)


def quadratic_params(offsets, shifts) -> dict:
    return {
        "params": {
            "offset": jnp.asarray(offsets, jnp.float32),
            "shift": jnp.asarray(shifts, jnp.float32),
        }
    }


# Online critics centred 0.3 and -0.2 above c(s); target critics elsewhere (+1, -1), so a target
# or gradient that read the wrong set would be far off.
ONLINE = quadratic_params([0.0, 0.0], [0.3, -0.2])
TARGET = quadratic_params([2.0, -1.0], [1.0, -1.0])


def quadratic_agent(monkeypatch, **overrides):
    monkeypatch.setattr(qsm, "EnsembleCritic", QuadraticCritic)
    spec = make_env("Pendulum-v1", seed=0).env_spec
    agent = qsm.make(QSMConfig(**{**TINY, **overrides}), spec)
    state = agent.init(jax.random.PRNGKey(0))
    return agent, state.replace(critic_params=ONLINE, target_critic_params=TARGET)


def hand_batch(action, reward=None, terminated=None, seed=7) -> Batch:
    action = np.asarray(action, np.float32).reshape(-1, 1)
    size = len(action)
    obs = jax.random.normal(jax.random.PRNGKey(seed), (size, 3))
    return Batch(
        obs=obs,
        action=jnp.asarray(action),
        reward=jnp.zeros(size) if reward is None else jnp.asarray(reward, jnp.float32),
        next_obs=-obs,
        terminated=jnp.zeros(size) if terminated is None else jnp.asarray(terminated, jnp.float32),
        truncated=jnp.ones(size),  # a time limit must not stop the bootstrap
    )


# --- the Q-score matching target (Algorithm 1) ---------------------------------------------------


@pytest.mark.parametrize("score_scaling", ["constant", "noise_std"])
def test_target_is_the_scaled_action_gradient_of_a_quadratic_critic(score_scaling):
    """``Q(s, a) = -|a - c(s)|^2`` has ``grad_a Q = -2 (a - c(s))``, so the target is
    ``-alpha grad_a Q = 2 alpha (a_t - c(s))``, times ``sigma_t`` for ``noise_std``."""
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.standard_normal((64, 3)), jnp.float32)
    noisy_action = jnp.asarray(rng.uniform(-2.0, 2.0, (64, 2)), jnp.float32)
    log_snr = jnp.asarray(rng.uniform(-5.0, 2.0, 64), jnp.float32)

    def q_fn(obs, action):
        return -jnp.sum((action - centre(obs)) ** 2, axis=-1)

    target, grad = qsm.qsm_noise_target(
        obs, noisy_action, log_snr, q_fn, score_scale=50.0, score_scaling=score_scaling
    )
    expected_grad = -2.0 * (noisy_action - centre(obs))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)
    scale = 1.0 if score_scaling == "constant" else np.sqrt(1.0 / (1.0 + np.exp(log_snr)))[:, None]
    np.testing.assert_allclose(target, -50.0 * scale * expected_grad, rtol=1e-5, atol=1e-5)
    if score_scaling == "noise_std":
        # The same target as MaxEntDP's score_target=qsm at beta = 1 / alpha.
        shared, _ = diffusion.noise_target(
            jax.random.PRNGKey(0),
            obs,
            noisy_action,
            log_snr,
            lambda obs, action: q_fn(obs, action),
            temperature=1.0 / 50.0,
            num_samples=1,
            score_target="qsm",
        )
        np.testing.assert_allclose(target, shared, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("critic_reduce", ["mean", "min"])
def test_agent_regresses_on_online_critic_gradients_at_replay_actions_noised_on_the_vp_grid(
    monkeypatch, critic_reduce
):
    """A spy around ``qsm_noise_target`` (jit disabled, so its inputs are concrete): the agent
    noises the replay action a as sqrt(abar) a + sqrt(1 - abar) z at one of the five vp levels,
    and the gradient is that of the online critics' mean (or min) at a_t."""
    seen = {}

    def spy(obs, noisy_action, log_snr, q_fn, **kwargs):
        seen.update(obs=obs, noisy_action=noisy_action, log_snr=log_snr, kwargs=kwargs)
        target, grad = qsm_noise_target(obs, noisy_action, log_snr, q_fn, **kwargs)
        seen["target"] = target
        return target, grad

    qsm_noise_target = qsm.qsm_noise_target
    monkeypatch.setattr(qsm, "qsm_noise_target", spy)
    agent, state = quadratic_agent(monkeypatch, critic_reduce=critic_reduce)
    batch = hand_batch(np.full(4096, 0.9))
    with jax.disable_jit():
        agent.update(state, jax.tree_util.tree_map(lambda x: x[None], batch), jax.random.key(1))

    lam, a_t, obs = np.asarray(seen["log_snr"]), np.asarray(seen["noisy_action"]), seen["obs"]
    grid = np.asarray(diffusion.log_snr_grid(5, "vp"))
    assert set(np.unique(lam)) == set(grid[1:])  # the five noisy levels, never the clean one
    assert seen["kwargs"] == {"score_scale": 50.0, "score_scaling": "constant"}
    for level in grid[1:]:
        rows = lam == level
        alpha, sigma = np.sqrt(1 / (1 + np.exp(-level))), np.sqrt(1 / (1 + np.exp(level)))
        z = (a_t[rows, 0] - alpha * 0.9) / sigma
        # ~800 draws per level: the mean's standard error is 0.035, the std's 0.025.
        assert abs(z.mean()) < 0.15 and abs(z.std() - 1.0) < 0.1

    # The target the agent regressed on, against the online critics' gradients by hand (shifts
    # 0.3 and -0.2 over c(s)): the mean of -2 (a_t - shift_j - c), or that of the lower critic.
    gaps = a_t[None] - np.array([0.3, -0.2])[:, None, None] - np.asarray(centre(obs))[None]
    grads = -2.0 * gaps  # [2, B, 1]
    if critic_reduce == "mean":
        expected = grads.mean(0)
    else:
        lower = (-(gaps**2))[..., 0].argmin(0)
        expected = np.take_along_axis(grads, lower[None, :, None], 0)[0]
    np.testing.assert_allclose(seen["target"], -50.0 * expected, rtol=1e-5, atol=1e-4)


def test_actor_updates_against_a_fixed_quadratic_critic_move_samples_to_its_maximum(monkeypatch):
    """With both critics -|a - c(s)|^2 (fixed), a few hundred QSM steps pull the sampled actions
    towards c(s) from a random initial policy (alpha 1, so the target 2 (a_t - c) stays small)."""
    agent, state = quadratic_agent(monkeypatch, score_scale=1.0, actor_lr=3e-3)
    state = state.replace(critic_params=quadratic_params([0.0, 0.0], [0.0, 0.0]))
    rng = np.random.default_rng(0)
    batch = hand_batch(rng.uniform(-1.0, 1.0, 256), seed=3)
    obs = batch.obs

    def distance(state):
        actions = agent.act(state, obs, jax.random.key(9), True)
        return float(jnp.mean(jnp.abs(actions - centre(obs))))

    before = distance(state)
    batches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (50, *x.shape)), batch)
    for step in range(6):
        state, _ = agent.update(state, batches, jax.random.key(step))
    after = distance(state)
    # A uniform policy on [-1, 1] is ~0.5 from c(s) on average; the trained one within 0.15.
    assert before > 0.3
    assert after < 0.15, (before, after)


# --- policy evaluation ---------------------------------------------------------------------------


@pytest.mark.parametrize("terminated", [[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
def test_critic_target_is_reward_plus_discounted_min_target_critic_without_entropy(
    monkeypatch, terminated
):
    """a' fixed by hand (the sampler replaced): the target is r + 0.9 (1 - terminated)
    min_j Q'_j(s', a'), from the target critics, with no entropy term; truncation (set on every
    row) does not stop the bootstrap."""
    next_action = np.array([0.25, -0.5, 0.75, -0.1], np.float32)
    monkeypatch.setattr(
        diffusion,
        "ddpm_sample",
        lambda eps_fn, key, shape, **_: jnp.broadcast_to(jnp.asarray(next_action)[:, None], shape),
    )
    agent, state = quadratic_agent(monkeypatch, target_noise=0.0)
    reward, terminated = np.array([1.0, -2.0, 0.5, 0.0]), np.array(terminated)
    batch = hand_batch(np.zeros(4), reward, terminated)
    target = agent.phases["critic target (DDPM sample)"](state, batch, jax.random.PRNGKey(1))

    c = np.asarray(centre(batch.next_obs))[:, 0]
    target_q = np.stack([2.0 - (next_action - 1.0 - c) ** 2, -1.0 - (next_action + 1.0 - c) ** 2])
    expected = reward + 0.9 * (1.0 - terminated) * target_q.min(0)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-6)


def test_target_noise_perturbs_the_next_action_within_the_box(monkeypatch):
    """target_noise=0.1 (the code's): the critics see clip(a' + N(0, 0.1^2)); at a' = 0 the
    target's spread is that of -|eps - shift - c|^2, so it differs from the noiseless one."""
    monkeypatch.setattr(
        diffusion, "ddpm_sample", lambda eps_fn, key, shape, **_: jnp.full(shape, 0.995)
    )
    seen = []

    class Spy(QuadraticCritic):
        def __call__(self, obs, action):
            seen.append(action)
            return super().__call__(obs, action)

    monkeypatch.setattr(qsm, "EnsembleCritic", Spy)
    spec = make_env("Pendulum-v1", seed=0).env_spec
    agent = qsm.make(QSMConfig(**TINY), spec)
    state = agent.init(jax.random.PRNGKey(0)).replace(target_critic_params=TARGET)
    with jax.disable_jit():
        agent.phases["critic target (DDPM sample)"](
            state, hand_batch(np.zeros(4096)), jax.random.key(2)
        )
    next_action = np.asarray(seen[-1])
    assert next_action.max() <= 1.0
    # Noise of std 0.1 around 0.995, clipped at 1: about 48% of the draws end at the bound.
    assert 0.4 < np.mean(next_action == 1.0) < 0.56
    below = next_action[next_action < 1.0]
    assert abs(below.mean() - (0.995 - 0.08)) < 0.01  # E[a' | a' < 1] = 0.995 - 0.1 phi/Phi


# --- acting ---------------------------------------------------------------------------------------


def test_evaluation_takes_the_ddpm_sample_and_behaviour_adds_clipped_gaussian_noise(monkeypatch):
    monkeypatch.setattr(
        diffusion, "ddpm_sample", lambda eps_fn, key, shape, **_: jnp.full(shape, 0.5)
    )
    agent, state = quadratic_agent(monkeypatch)
    obs = jnp.zeros((20_000, 3))
    np.testing.assert_array_equal(agent.act(state, obs, jax.random.key(0), True), 0.5)
    behaviour = np.asarray(agent.act(state, obs, jax.random.key(0), False))
    # 20,000 draws: the std's standard error is 0.0005.
    assert abs(behaviour.mean() - 0.5) < 0.003 and abs(behaviour.std() - 0.1) < 0.003
    quiet, _ = quadratic_agent(monkeypatch, exploration_noise=0.0)
    np.testing.assert_array_equal(quiet.act(state, obs, jax.random.key(0), False), 0.5)


@pytest.mark.parametrize("sampler_clip", ["sample", "x0", "none"])
@pytest.mark.parametrize("beta_schedule", ["vp", "linear"])
def test_the_sampler_runs_the_configured_schedule_and_clipping(
    monkeypatch, sampler_clip, beta_schedule
):
    calls = []
    monkeypatch.setattr(
        diffusion,
        "ddpm_sample",
        lambda eps_fn, key, shape, **kwargs: calls.append(kwargs) or jnp.full(shape, 3.0),
    )
    agent, state = quadratic_agent(
        monkeypatch, sampler_clip=sampler_clip, beta_schedule=beta_schedule, num_diffusion_steps=7
    )
    action = agent.act(state, jnp.zeros((2, 3)), jax.random.key(0), True)
    np.testing.assert_array_equal(action, 1.0)  # the returned action is clipped to the box
    assert calls[-1] == {
        "num_steps": 7,
        "spacing": beta_schedule,
        "clip_x0": sampler_clip == "x0",
        "clip_sample": sampler_clip == "sample",
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"score_scaling": "noise_std", "critic_reduce": "min"},
        {"beta_schedule": "linear", "sampler_clip": "x0", "num_diffusion_steps": 3},
        {"weight_init": "xavier_uniform", "actor_lr_decay_steps": 100, "layer_norm": True},
        {"critic_activation": "mish", "target_noise": 0.0, "exploration_noise": 0.0},
    ],
)
def test_every_option_gives_finite_updates(options):
    spec = make_env("Pendulum-v1", seed=0).env_spec
    agent = qsm.make(QSMConfig(**{**TINY, "critic_lr": 3e-4, **options}), spec)
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = hand_batch(rng.uniform(-1, 1, 32), rng.standard_normal(32))
    batches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (2, *x.shape)), batch)
    state, metrics = agent.update(state, batches, jax.random.key(0))
    assert int(state.step) == 2
    assert all(np.isfinite(float(v)) for v in metrics.values())


# --- presets --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::diffmaxent.errors.PresetSuiteWarning")  # dmc presets, gym env
def test_presets_paper_official_and_maxentdp_table_b2():
    paper = resolve_config("qsm", "Pendulum-v1", preset="paper")
    # The official config: T = 5 vp levels, M_q = 50, 512 x 512, lr 3e-4, tau 0.005, batch 256.
    assert paper.agent == QSMConfig()
    assert (paper.agent.num_diffusion_steps, paper.agent.score_scale) == (5, 50.0)
    assert paper.agent.actor_hidden_dims == paper.agent.critic_hidden_dims == (512, 512)
    assert (paper.loop.batch_size, paper.loop.learning_starts) == (256, 10_000)
    official = resolve_config("qsm", "Pendulum-v1", preset="official")
    agent_fields = {f.name for f in dataclasses.fields(QSMConfig)}
    for name, value in OFFICIAL_DIFFERENCES.items():
        part = official.agent if name in agent_fields else official.loop
        assert (
            getattr(part, name)
            == value
            != getattr(paper.agent if name in agent_fields else paper.loop, name)
        )
    assert (
        dataclasses.replace(official.agent, actor_lr_decay_steps=0, weight_init="lecun_normal")
        == QSMConfig()
    )
    b2 = resolve_config("qsm", "Pendulum-v1", preset="maxentdp-b2").agent
    assert b2 == dataclasses.replace(QSMConfig(), **MAXENTDP_B2)
    assert b2.actor_hidden_dims == (256, 256, 256) and b2.num_diffusion_steps == 20
