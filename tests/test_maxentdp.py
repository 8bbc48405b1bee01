"""MaxEntDP agent options: score targets, samplers, temperature modes, best-of-M selection."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agent_helpers import tiny_agent
from diffmaxent import diffusion, resolve_config
from diffmaxent.agents.common import temperature_step
from diffmaxent.agents.maxentdp import PAPER_TEMPERATURES, PRESETS
from diffmaxent.errors import BiasedEstimatorWarning
from diffmaxent.nn import EnsembleCritic

TINY = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "16,16",
    "num_qne_samples": 8,
    "num_diffusion_steps": 3,
    "num_logprob_levels": 3,
    "num_logprob_samples": 2,
    "batch_size": 16,
}


@pytest.mark.parametrize(
    "options",
    [
        {"score_target": "idem"},
        {"score_target": "qsm"},
        {"sampler": "ddpm", "logprob_rule": "rectangle", "logprob_clip_x0": True},
        {"qne_target_critic": False, "entropy_backup": False, "actor_lr_decay_steps": 100},
    ],
)
def test_every_option_gives_finite_updates(options):
    agent, buffer, _ = tiny_agent("maxentdp", {**TINY, **options})
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 16, 2)
    state, metrics = agent.update(state, batch, jax.random.PRNGKey(1))
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    action = agent.act(state, batch.obs[0], jax.random.PRNGKey(2), False)
    assert action.shape == (16, 1) and np.all(np.abs(action) <= 1.0)


def test_temperature_auto_moves_and_fixed_stays():
    auto, buffer, _ = tiny_agent("maxentdp", {**TINY, "temperature": "auto", "temperature_lr": 0.1})
    fixed, _, _ = tiny_agent("maxentdp", {**TINY, "temperature": 0.3})
    batch = buffer.sample(np.random.default_rng(0), 16, 4)
    _, auto_metrics = auto.update(auto.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1))
    _, fixed_metrics = fixed.update(fixed.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1))
    assert float(fixed_metrics["temperature"]) == pytest.approx(0.3)
    assert float(auto_metrics["temperature"]) != pytest.approx(0.1, abs=1e-4)  # init 0.1, moved


def test_best_of_m_selects_higher_q_actions_than_plain_sampling():
    agent, buffer, config = tiny_agent("maxentdp", {**TINY, "eval_candidates": 16})
    state = agent.init(jax.random.PRNGKey(0))
    obs = buffer.obs[:64]
    critic = EnsembleCritic(config.agent.critic_hidden_dims)

    def mean_q(actions):
        return float(critic.apply(state.target_critic_params, obs, actions).min(0).mean())

    best = agent.act(state, obs, jax.random.PRNGKey(3), True)
    plain = agent.act(state, obs, jax.random.PRNGKey(3), False)
    assert best.shape == plain.shape == (64, 1)
    assert mean_q(best) > mean_q(plain)


def test_paper_preset_uses_table_b1_temperatures():
    paper = PRESETS["paper"]
    assert paper.values_for("HalfCheetah-v5")["temperature"] == 0.2
    assert paper.values_for("Humanoid-v4")["temperature"] == 0.02
    assert "temperature" not in paper.values_for("Pendulum-v1")
    assert set(PAPER_TEMPERATURES) == {
        "Ant",
        "HalfCheetah",
        "Hopper",
        "Humanoid",
        "Swimmer",
        "Walker2d",
    }


def test_presets_listing_shows_every_table_b1_temperature(capsys):
    from diffmaxent.cli import main

    assert main(["presets", "maxentdp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for task, beta in PAPER_TEMPERATURES.items():
        assert f"    {task}: temperature={beta}" in lines


def _logprob_error_per_dim(rule: str, levels: int, samples: int, control_variate: bool) -> float:
    """Mean error of the log-probability estimate per action dimension for the narrow Gaussian
    policy N(0, 0.05^2 I) in 2 dimensions, whose noise predictor and density are exact."""
    std, actions = 0.05, 0.05 * jax.random.normal(jax.random.PRNGKey(0), (2048, 2))
    estimate = diffusion.log_prob(
        diffusion.gaussian_eps_fn(0.0, std),
        jax.random.PRNGKey(1),
        actions,
        logprob_rule=rule,
        num_levels=levels,
        num_samples=samples,
        control_variate=control_variate,
    )
    exact = diffusion.gaussian_log_prob(actions, 0.0, std)
    return float(jnp.mean(estimate - exact)) / 2


def test_auto_temperature_on_the_rectangle_rule_falls_too_low_and_warns():
    """The direction of the bias: the paper's rectangle rule (T 20, N 50) underestimates the
    log-probability of a narrow policy, so the entropy estimate -log pi is too high; where the
    true entropy equals the target (the exact step keeps beta), the step taken on the biased
    estimate lowers beta. The cpu preset's Gauss-Legendre rule with a control variate is
    close to unbiased there. Resolving that combination warns in one line."""
    rectangle = _logprob_error_per_dim("rectangle", 20, 50, False)
    legendre = _logprob_error_per_dim("gauss_legendre", 6, 4, True)
    assert rectangle < -0.5 and abs(legendre) < 0.15

    true_entropy = 2 * (0.5 * np.log(2 * np.pi * np.e) + np.log(0.05))  # of N(0, 0.05^2 I_2)
    biased_entropy = true_entropy - 2 * rectangle
    optimizer = optax.adam(0.01)
    log_temperature = jnp.log(jnp.asarray(0.1))
    steps = {}
    for name, entropy in [("exact", true_entropy), ("biased", biased_entropy)]:
        steps[name], _ = temperature_step(
            log_temperature,
            optimizer.init(log_temperature),
            optimizer,
            jnp.asarray(entropy),
            float(true_entropy),
            True,
        )
    assert float(steps["exact"]) == pytest.approx(float(log_temperature))
    assert float(steps["biased"]) < float(log_temperature)

    with pytest.warns(BiasedEstimatorWarning, match="auto drives the temperature too low"):
        resolve_config("maxentdp", overrides={"temperature": "auto", "logprob_rule": "rectangle"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasedEstimatorWarning)
        resolve_config("maxentdp", overrides={"temperature": "auto"})  # cpu: Gauss-Legendre
        resolve_config("maxentdp", preset="paper", env="Pendulum-v1")  # rectangle, fixed beta
