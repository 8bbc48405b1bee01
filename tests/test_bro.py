"""BRO: the BroNet residual block (shape, LayerNorm placement), the quantile Huber loss, resets
(exactly the chosen networks re-drawn from the initial distribution, at the scheduled gradient
step, and across a resumed run), optimism moving exploration along the critics' disagreement,
the dual variables' directions and the presets."""

from __future__ import annotations

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffmaxent
from agent_helpers import tiny_agent
from diffmaxent import checkpoint, runs
from diffmaxent.agents import bro
from diffmaxent.api import resolve_config
from diffmaxent.cli import main
from diffmaxent.critics import (
    BroNet,
    BroResidualBlock,
    quantile_huber_loss,
    quantile_midpoints,
)

TINY = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "16,16",
    "num_quantiles": 8,
    "batch_size": 16,
    "updates_per_step": 2,
}


# --- BroNet --------------------------------------------------------------------------------------


def _layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def test_the_residual_block_keeps_the_width_and_normalises_after_each_dense_inside_the_branch():
    block = BroResidualBlock(width=6, inner_dim=10)
    x = 3.0 + 5.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    params = block.init(jax.random.PRNGKey(1), x)
    # Random LayerNorm scales and offsets and Dense biases, so that no placement hides behind
    # LayerNorm's identity start.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = tree.unflatten(
        [
            leaf + 0.5 * jax.random.normal(k, leaf.shape)
            for leaf, k in zip(leaves, keys, strict=True)
        ]
    )
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    out = np.asarray(block.apply(params, x))
    assert out.shape == (4, 6)

    xn = np.asarray(x)
    hidden = xn @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    hidden = np.maximum(_layer_norm(hidden, p["LayerNorm_0"]["scale"], p["LayerNorm_0"]["bias"]), 0)
    branch = hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    branch = _layer_norm(branch, p["LayerNorm_1"]["scale"], p["LayerNorm_1"]["bias"])
    np.testing.assert_allclose(out, xn + branch, rtol=1e-4, atol=1e-4)


def test_bronet_shapes_and_layers():
    x = jnp.ones((5, 7))
    net = BroNet((32, 16, 16), output_dim=3)
    params = net.init(jax.random.PRNGKey(0), x)["params"]
    assert net.apply({"params": params}, x).shape == (5, 3)
    assert sorted(params) == [
        "BroResidualBlock_0",
        "BroResidualBlock_1",
        "Dense_0",
        "Dense_1",
        "LayerNorm_0",
    ]
    assert params["BroResidualBlock_0"]["Dense_0"]["kernel"].shape == (32, 16)
    features = BroNet((32, 16))
    assert features.apply(features.init(jax.random.PRNGKey(0), x), x).shape == (5, 32)


# --- the quantile critic -------------------------------------------------------------------------


def test_quantile_huber_loss_on_hand_cases():
    taus = jnp.array([0.25])
    # Target above the estimate: weight tau; below: 1 - tau. Huber: quadratic inside kappa.
    assert float(quantile_huber_loss(jnp.array([0.0]), jnp.array([0.5]), taus)) == pytest.approx(
        0.25 * 0.125
    )
    assert float(quantile_huber_loss(jnp.array([0.0]), jnp.array([-3.0]), taus)) == pytest.approx(
        0.75 * 2.5
    )


def test_minimising_the_quantile_loss_finds_the_quantiles_of_the_target_samples():
    taus = quantile_midpoints(4)
    samples = jnp.arange(100.0)
    grad = jax.grad(lambda q: quantile_huber_loss(q, samples, taus))
    descend = jax.jit(lambda q: jax.lax.fori_loop(0, 3000, lambda _, q: q - 1.0 * grad(q), q))
    quantiles = descend(jnp.zeros(4))
    np.testing.assert_allclose(quantiles, [12.5, 37.5, 62.5, 87.5], atol=1.0)


# --- optimism ------------------------------------------------------------------------------------


def _spread_critics(obs, action, direction: float):
    """Two critics that agree on the mean (0) and disagree by ``2 + direction * a`` summed over
    the action: ``[2, B, 3]`` quantiles."""
    spread = 2.0 + direction * action.sum(-1)
    return jnp.stack([spread, -spread])[..., None].repeat(3, axis=-1)


SHIFT_ACTOR = bro.BroActor((16, 16), 1)
SHIFT = bro.OptimisticShift((16, 16), 1)
SHIFT_OPTIMIZER = optax.adam(1e-3)


@jax.jit
def _shift_adam_steps(shift_params, actor_params, obs, direction, optimism, steps):
    """``steps`` Adam steps of the optimistic shift (one compiled program for every call)."""

    def critics(obs, action):
        return _spread_critics(obs, action, direction)

    def step(i, carry):
        shift_params, opt_state = carry
        grads, _ = jax.grad(bro.optimistic_actor_loss, argnums=4, has_aux=True)(
            SHIFT_ACTOR,
            SHIFT,
            critics,
            0.75,
            shift_params,
            actor_params,
            optimism,
            1e-3,
            obs,
            jax.random.PRNGKey(i),
        )
        updates, opt_state = SHIFT_OPTIMIZER.update(grads, opt_state)
        return optax.apply_updates(shift_params, updates), opt_state

    carry = (shift_params, SHIFT_OPTIMIZER.init(shift_params))
    return jax.lax.fori_loop(0, steps, step, carry)[0]


def _train_shift(direction: float, optimism: float, steps: int = 60):
    """Train the optimistic policy's shift for ``steps`` Adam steps against
    :func:`_spread_critics`: ``(obs, actor_params, shift_params, mu_c, mu_o, log sigma_c)``."""
    actor, shift = SHIFT_ACTOR, SHIFT
    obs = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    actor_params = actor.init(jax.random.PRNGKey(1), obs)
    # The conservative policy: mean 0 (where tanh passes the critics' slope on whole) and log-std
    # -1 in every state (the KL's 1 / sigma_c^2 then leaves the shift free to move).
    heads = actor_params["params"]
    heads["Dense_0"] = jax.tree_util.tree_map(jnp.zeros_like, heads["Dense_0"])
    log_std_bias = math.atanh(
        (-1.0 - bro.LOG_STD_MIN) / (0.5 * (bro.LOG_STD_MAX - bro.LOG_STD_MIN)) - 1
    )
    heads["Dense_1"] = {
        "kernel": jnp.zeros_like(heads["Dense_1"]["kernel"]),
        "bias": jnp.full_like(heads["Dense_1"]["bias"], log_std_bias),
    }
    shift_params = shift.init(jax.random.PRNGKey(2), obs, jnp.zeros((64, 1)))
    shift_params = _shift_adam_steps(shift_params, actor_params, obs, direction, optimism, steps)
    mean_c, log_std_c = actor.apply(actor_params, obs)
    mean_o, _ = bro.optimistic_gaussian(shift, shift_params, obs, mean_c, log_std_c, 0.75)
    return obs, actor_params, shift_params, mean_c, mean_o, log_std_c


def test_optimism_moves_the_exploration_mean_towards_more_critic_disagreement():
    _, _, _, mean_c, right, _ = _train_shift(direction=1.0, optimism=1.0)
    _, _, _, _, left, _ = _train_shift(direction=-1.0, optimism=1.0)
    _, _, _, _, neutral, _ = _train_shift(direction=1.0, optimism=0.0)
    assert float(jnp.min(right - mean_c)) > 0.02
    assert float(jnp.max(left - mean_c)) < -0.02
    assert float(jnp.max(jnp.abs(neutral - mean_c))) < 0.01


def test_exploration_samples_the_optimistic_policy_and_evaluation_the_conservative_mean():
    obs, actor_params, shift_params, mean_c, mean_o, log_std_c = _train_shift(1.0, 1.0)
    agent, _, _ = tiny_agent("bro", TINY)
    state = agent.init(jax.random.PRNGKey(0)).replace(
        actor_params=actor_params, optimistic_actor_params=shift_params
    )
    np.testing.assert_allclose(
        agent.act(state, obs, jax.random.PRNGKey(1), True), jnp.tanh(mean_c), rtol=1e-6
    )
    draws = 400
    sampled = agent.act(state, jnp.tile(obs, (draws, 1)), jax.random.PRNGKey(1), False)
    pre_tanh = jnp.arctanh(jnp.clip(sampled, -0.999999, 0.999999)).reshape(draws, 64)
    std = 0.75 * jnp.exp(log_std_c[:, 0])
    # Per state: mean mu_o (within 4 standard errors), std 0.75 sigma_c.
    np.testing.assert_array_less(jnp.abs(pre_tanh.mean(0) - mean_o[:, 0]), 4 * std / draws**0.5)
    np.testing.assert_allclose(pre_tanh.std(0), std, rtol=0.2)


# --- the dual variables --------------------------------------------------------------------------


def test_dual_variables_follow_the_kl_constraint():
    config = bro.BROConfig()
    raw = bro.raw_of(1.0)
    assert float(bro.bounded_exp(raw)) == pytest.approx(1.0, rel=1e-5)
    assert float(bro.bounded_exp(bro.raw_of(0.25))) == pytest.approx(0.25, rel=1e-5)
    too_far, close = jnp.float32(config.kl_target * 3), jnp.float32(config.kl_target / 3)
    # Straying beyond the KL target: less optimism, a stronger KL weight; within it, the reverse.
    assert float(jax.grad(bro.optimism_loss)(raw, too_far, config)) > 0
    assert float(jax.grad(bro.optimism_loss)(raw, close, config)) < 0
    assert float(jax.grad(bro.kl_weight_loss)(raw, too_far, config)) < 0
    assert float(jax.grad(bro.kl_weight_loss)(raw, close, config)) > 0


# --- resets --------------------------------------------------------------------------------------


def _trained(overrides, updates=3):
    agent, buffer, _ = tiny_agent("bro", {**TINY, **overrides})
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for i in range(updates):
        state, _ = agent.update(state, buffer.sample(rng, 16, 2), jax.random.PRNGKey(i))
    return agent, buffer, state


CRITIC_FIELDS = bro.RESET_PARTS["critic"]
OTHER_FIELDS = [
    name for part, names in bro.RESET_PARTS.items() if part != "critic" for name in names
]


def _assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _differs(a, b) -> bool:
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def test_a_reset_redraws_exactly_the_reset_networks_from_the_initial_distribution():
    agent, _, trained = _trained({"reset_networks": "critic"})
    reset = agent.phases["reset"](trained, None, None)
    next_key, draw_key = jax.random.split(trained.reset_key)
    drawn = agent.init(draw_key)  # a fresh initialisation: the initial distribution's draw
    for name in CRITIC_FIELDS:
        _assert_same(getattr(reset, name), getattr(drawn, name))
        assert _differs(getattr(reset, name), getattr(trained, name)), name
    # A fresh draw, not the run's own initial parameters.
    assert _differs(reset.critic_params, agent.init(jax.random.PRNGKey(0)).critic_params)
    for name in OTHER_FIELDS:
        _assert_same(getattr(reset, name), getattr(trained, name))
    np.testing.assert_array_equal(reset.step, trained.step)
    np.testing.assert_array_equal(reset.reset_key, next_key)


def test_a_reset_of_everything_to_the_initial_parameters_as_the_official_code():
    agent, _, trained = _trained({"reset_draw": "initial"})
    reset = agent.phases["reset"](trained, None, None)
    initial = agent.init(jax.random.PRNGKey(0))
    for name in (*CRITIC_FIELDS, *OTHER_FIELDS):
        _assert_same(getattr(reset, name), getattr(initial, name))
        assert _differs(getattr(reset, name), getattr(trained, name)), name


@pytest.mark.slow
def test_the_update_resets_before_the_scheduled_gradient_step():
    # Resets before gradient step 2 (the second update call's first step) equal: update, reset,
    # update of an agent without resets.
    scheduled, buffer, _ = _trained({"reset_at_updates": "2"}, updates=0)
    plain, _, _ = _trained({"resets": False}, updates=0)
    batches = [buffer.sample(np.random.default_rng(i), 16, 2) for i in range(2)]
    keys = [jax.random.PRNGKey(10 + i) for i in range(2)]

    state = scheduled.init(jax.random.PRNGKey(0))
    for batch, key in zip(batches, keys, strict=True):
        state, _ = scheduled.update(state, batch, key)
    expected = plain.init(jax.random.PRNGKey(0))
    expected, _ = plain.update(expected, batches[0], keys[0])
    expected = scheduled.phases["reset"](expected, None, None)
    expected, _ = plain.update(expected, batches[1], keys[1])
    _assert_same(state, expected)

    unscheduled = plain.init(jax.random.PRNGKey(0))
    for batch, key in zip(batches, keys, strict=True):
        unscheduled, _ = plain.update(unscheduled, batch, key)
    assert _differs(state.critic_params, unscheduled.critic_params)


def test_reset_points_map_the_papers_env_steps_to_gradient_steps():
    assert bro.reset_points((15_001, 50_001), 2_500, 10) == (125_010, 475_010)
    assert bro.BROConfig().reset_at_updates[0] == 125_010
    with pytest.raises(diffmaxent.UsageError, match="reset_networks"):
        tiny_agent("bro", {**TINY, "reset_networks": "critic,actors"})


# --- presets -------------------------------------------------------------------------------------


def test_presets_give_the_replay_ratios_and_reset_schedules():
    paper = resolve_config("bro", "dmc:dog-run", preset="paper")
    fast = resolve_config("bro", "dmc:dog-run", preset="paper-fast")
    cpu = resolve_config("bro", "Pendulum-v1", preset="cpu")
    assert paper.loop.updates_per_step == 10 and fast.loop.updates_per_step == 2
    assert paper.loop.batch_size == fast.loop.batch_size == 128
    assert paper.agent.critic_hidden_dims == (512, 512, 512)
    assert paper.agent.actor_hidden_dims == (256, 256)
    assert paper.agent.num_quantiles == 100 and paper.agent.weight_decay == 1e-4
    assert len(paper.agent.reset_at_updates) == 8
    assert fast.agent.reset_at_updates == ((15_001 - 2_500) * 2,)
    # cpu: the one reset of BRO (Fast) at env step 15,001, after its own 1,000 random steps.
    assert cpu.agent.reset_at_updates == ((15_001 - cpu.loop.learning_starts) * 2,)


# --- resume across a reset -----------------------------------------------------------------------

LOOP = {
    **TINY,
    "updates_per_step": 1,
    "learning_starts": 40,
    "eval_every": 60,
    "eval_episodes": 1,
    "batch_size": 8,
    # Gradient step 100 is taken at env step 140: after the checkpoint at 120, before the kill.
    "reset_at_updates": "100",
}

RUNNER = """
import os, signal, sys
from diffmaxent.cli import main
from diffmaxent.loops import bookkeeping

at, calls = int(sys.argv[1]), [0]
original = bookkeeping.Progress.advance

def advance(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return result

bookkeeping.Progress.advance = advance
sys.exit(main(sys.argv[2:]))
"""


def _train_arguments(out, steps: int = 180) -> list[str]:
    sets = [item for k, v in LOOP.items() for item in ("--set", f"{k}={v}")]
    return [
        "train",
        "--algo",
        "bro",
        "--env",
        "Pendulum-v1",
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--quiet",
        *sets,
    ]


def _final_state(run_dir) -> dict[str, np.ndarray]:
    last = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    with np.load(last / checkpoint.STATE_FILE) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_across_a_reset_as_the_uninterrupted_one(tmp_path):
    reference = tmp_path / "reference"
    assert main(_train_arguments(reference)) == 0
    killed = tmp_path / "killed"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "150", *_train_arguments(killed)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    diffmaxent.train(resume=killed, progress=False)
    assert runs.read_metrics(killed) == [
        {**row, "wall_seconds": got["wall_seconds"]}
        for row, got in zip(runs.read_metrics(reference), runs.read_metrics(killed), strict=True)
    ]
    final, expected = _final_state(killed), _final_state(reference)
    assert final.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)
    # The run did reset: its critic differs from one trained without the reset.
    unreset = tmp_path / "unreset"
    assert main([*_train_arguments(unreset), "--set", "resets=false"]) == 0
    assert any(
        not np.array_equal(value, _final_state(unreset)[name])
        for name, value in expected.items()
        if "critic_params" in name
    )
