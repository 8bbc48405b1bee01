"""DIPO: the action gradient against a quadratic critic (closed form, the box, the norm clip), the
behaviour-cloning step, the replay loop writing improved actions back to the rows it sampled, and
exact resume of a run whose replay actions were rewritten."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmaxent
from agent_helpers import tiny_agent
from diffmaxent import buffer as buffer_module
from diffmaxent import checkpoint, registry, runs
from diffmaxent.agents import dipo
from diffmaxent.agents.dipo import OFFICIAL_DIFFERENCES, PRESETS, improve_actions
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.cli import main

TINY = {
    "actor_hidden_dims": "16,16",
    "critic_hidden_dims": "16,16",
    "num_diffusion_steps": 3,
    "action_gradient_steps": 2,
    "batch_size": 16,
}
# Q(s, a) = -|a - c|^2 has grad_a Q = -2 (a - c): one ascent step a + eta grad Q gives
# c + (1 - 2 eta)(a - c), so k steps give c + (1 - 2 eta)^k (a - c) while nothing is clipped.
CENTRE = jnp.asarray([0.3, -0.2])


def _quadratic_q(obs: jax.Array, action: jax.Array) -> jax.Array:
    return -jnp.sum((action - CENTRE) ** 2, axis=-1)


def _improve(action, **options):
    settings = {"step_size": 0.1, "num_steps": 3, "optimizer": "sgd", "max_grad_norm": 0.0}
    return improve_actions(
        _quadratic_q, jnp.zeros((len(action), 3)), action, **{**settings, **options}
    )


def test_the_action_gradient_follows_grad_q_in_closed_form():
    action = jnp.asarray([[0.9, 0.5], [-0.7, -0.9], [0.3, -0.2]])
    improved = _improve(action)
    expected = CENTRE + (1 - 2 * 0.1) ** 3 * (action - CENTRE)
    np.testing.assert_allclose(improved, expected, rtol=1e-6, atol=1e-6)
    assert np.all(_quadratic_q(None, improved) >= _quadratic_q(None, action))


def test_the_action_gradient_stays_in_the_box():
    # Q = -|a - (3, -3)|^2 pulls every action out of the box; each step is clipped back.
    def far_q(obs, action):
        return -jnp.sum((action - jnp.asarray([3.0, -3.0])) ** 2, axis=-1)

    action = jnp.asarray([[0.0, 0.0], [0.95, -0.2]])
    one = improve_actions(
        far_q,
        jnp.zeros((2, 3)),
        action,
        step_size=0.02,
        num_steps=1,
        optimizer="sgd",
        max_grad_norm=0.0,
    )
    # a + 0.02 * 2 (c - a), clipped: (0.12, -0.12) and (1, -0.312).
    np.testing.assert_allclose(one, [[0.12, -0.12], [1.0, -0.312]], rtol=1e-6)
    for optimizer in ("sgd", "adam"):
        many = improve_actions(
            far_q,
            jnp.zeros((2, 3)),
            action,
            step_size=0.5,
            num_steps=20,
            optimizer=optimizer,
            max_grad_norm=0.0,
        )
        np.testing.assert_array_equal(many, [[1.0, -1.0], [1.0, -1.0]])


def test_the_action_gradient_clips_the_batch_gradient_norm():
    action = jnp.asarray([[0.9, 0.5], [-0.7, -0.9]])
    gradient = -2 * (action - CENTRE)
    clipped = _improve(action, num_steps=1, max_grad_norm=0.5)
    expected = action + 0.1 * gradient * 0.5 / jnp.linalg.norm(gradient)
    np.testing.assert_allclose(clipped, expected, rtol=1e-6)


def test_adam_on_actions_moves_each_coordinate_by_eta_on_its_first_step():
    action = jnp.asarray([[0.9, 0.5], [-0.7, -0.9]])
    improved = _improve(action, num_steps=1, optimizer="adam")
    np.testing.assert_allclose(improved - action, 0.1 * np.sign(CENTRE - action), rtol=1e-4)


def test_behaviour_cloning_moves_the_policy_towards_the_improved_actions():
    # Improved actions fixed at a target (eta tiny): the denoising loss falls and the sampled
    # actions approach the target.
    agent, buffer, _ = tiny_agent("dipo", {**TINY, "action_lr": 1e-9, "actor_lr": 3e-3})
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    target = np.asarray([0.6], np.float32)
    obs = buffer.obs[:64]
    before = agent.act(state, obs, jax.random.PRNGKey(1), False)
    losses = []
    for i in range(150):
        batch = buffer.sample(rng, 16, 2)
        improved = np.broadcast_to(target, batch.action.shape)
        state, metrics, out = agent.update_improving_actions(
            state, batch, improved, jax.random.PRNGKey(i)
        )
        losses.append(float(metrics["actor_loss"]))
    after = agent.act(state, obs, jax.random.PRNGKey(1), False)
    np.testing.assert_allclose(out, np.broadcast_to(target, out.shape), atol=1e-6)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert np.mean(np.abs(after - target)) < 0.5 * np.mean(np.abs(before - target))


def test_update_is_update_improving_actions_from_the_taken_actions():
    agent, buffer, _ = tiny_agent("dipo", TINY)
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 16, 2)
    key = jax.random.PRNGKey(3)
    plain_state, plain_metrics = agent.update(state, batch, key)
    rich_state, rich_metrics, improved = agent.update_improving_actions(
        state, batch, batch.action, key
    )
    for got, want in zip(
        jax.tree_util.tree_leaves((plain_state, plain_metrics)),
        jax.tree_util.tree_leaves((rich_state, rich_metrics)),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    assert improved.shape == batch.action.shape
    assert np.all(np.abs(improved) <= 1.0)
    assert rich_metrics["action_q_gain"] > 0  # uphill on the critic it has just updated


def test_presets_resolve_and_official_differs_from_paper_only_as_documented():
    paper = diffmaxent.resolve_config("dipo", "Pendulum-v1", preset="paper")
    official = diffmaxent.resolve_config("dipo", "Pendulum-v1", preset="official")
    assert paper.agent.action_optimizer == "sgd" and paper.agent.num_diffusion_steps == 100
    assert paper.agent.actor_hidden_dims == (256, 256, 256)
    for name, value in OFFICIAL_DIFFERENCES.items():
        assert getattr(official.agent, name) == value != getattr(paper.agent, name)
    assert set(PRESETS) == {"paper", "official", "cpu"}


# --- the replay loop -----------------------------------------------------------------------------

LOOP = {**TINY, "learning_starts": 40, "eval_every": 60, "eval_episodes": 1, "batch_size": 8}


def _train_arguments(out, steps: int = 180) -> list[str]:
    sets = [item for k, v in LOOP.items() for item in ("--set", f"{k}={v}")]
    return [
        "train",
        "--algo",
        "dipo",
        "--env",
        "Pendulum-v1",
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--quiet",
        *sets,
    ]


def test_the_loop_writes_the_returned_actions_to_the_rows_it_sampled(tmp_path, monkeypatch):
    # The agent's improved actions are replaced by "previous + 1", so each row's improved action
    # minus its taken action counts the update calls that sampled it (once per call).
    drawn = []
    sample_index = ReplayBuffer.sample_index

    def recording_sample_index(self, *args, **kwargs):
        index = sample_index(self, *args, **kwargs)
        drawn.append((self.inserted, index.copy()))
        return index

    make = dipo.make

    def counting_make(config, spec):
        agent = make(config, spec)

        def plus_one(state, batch, improved_action, key):
            state, metrics, _ = agent.update_improving_actions(state, batch, improved_action, key)
            return state, metrics, improved_action + 1.0

        return agent._replace(update_improving_actions=plus_one)

    monkeypatch.setattr(ReplayBuffer, "sample_index", recording_sample_index)
    counting = dataclasses.replace(registry.ALGOS["dipo"], make=counting_make)
    monkeypatch.setitem(registry.ALGOS, "dipo", counting)
    result = diffmaxent.train(
        "dipo", "Pendulum-v1", steps=100, out=tmp_path / "run", overrides=LOOP, progress=False
    )
    restored = ReplayBuffer.restore(result.run_dir / runs.REPLAY_DIR, 1_000_000, 3, 1, 100, True)
    expected = np.zeros(100)
    for _, index in drawn:
        expected[np.unique(index)] += 1
    assert len(drawn) == 100 - 40 + 1 and expected.sum() > 0
    counts = restored.improved_action[:100, 0] - restored.action[:100, 0]
    np.testing.assert_allclose(counts, expected, atol=1e-5)


RUNNER = """
import os, signal, sys
from diffmaxent import registry
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


def _final_state(run_dir) -> dict[str, np.ndarray]:
    last = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[-1]
    with np.load(last / checkpoint.STATE_FILE) as data:
        return {name: data[name] for name in data.files}


def test_a_killed_run_resumes_to_the_uninterrupted_one_rewritten_actions_included(tmp_path):
    # Killed at step 150, it resumes from the checkpoint at 120. The actions improved before
    # 120 live in rows saved in the chunks of steps 0-60 and 60-120 before they were rewritten:
    # only the improved-action file of checkpoint 120 holds them.
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
    replay = runs.REPLAY_DIR
    for directory in (killed, reference):
        assert (directory / replay / f"improved_{180:012d}.npy").is_file()
    np.testing.assert_array_equal(
        np.load(killed / replay / f"improved_{180:012d}.npy"),
        np.load(reference / replay / f"improved_{180:012d}.npy"),
    )


def test_a_damaged_improved_action_file_is_a_damaged_checkpoint_not_silent_loss(tmp_path):
    run_dir = tmp_path / "run"
    assert main(_train_arguments(run_dir, steps=120)) == 0
    newest = run_dir / runs.REPLAY_DIR / f"improved_{120:012d}.npy"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(buffer_module.ReplayDataError, match="unreadable"):
        ReplayBuffer.restore(run_dir / runs.REPLAY_DIR, 1_000_000, 3, 1, 120, True)
    with pytest.warns(checkpoint.DamagedFileWarning, match="improved_000000000120.npy: unreadable"):
        diffmaxent.train(resume=run_dir, steps=180, progress=False)
    assert runs.read_metrics(run_dir)[-1]["env_step"] == 180
