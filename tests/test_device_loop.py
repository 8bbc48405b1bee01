"""The device loop (``mjx:`` envs, training in one compiled program): the on-device replay buffer,
determinism, seeds that differ, episode ends stored as the env gave them (termination apart from
truncation, the real final observation), runs continued via the API that end bit for bit where
the uninterrupted ones do, and sac and ppo end to end through :func:`diffmaxent.train`.

MJX compiles for about a minute per program on a CPU, so every run of an algorithm here shares
one configuration (one compiled program, cached by the loop) and the runs are module fixtures.

Needs the `mjx` extra.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmaxent
from diffmaxent import checkpoint, runs
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.errors import UsageError
from diffmaxent.loops import device
from diffmaxent.loops.device import DeviceBuffer
from diffmaxent.types import Batch

pytest.importorskip("mujoco_playground")

ENV = "mjx:CartpoleBalance"
SMALL = {"actor_hidden_dims": "32,32", "critic_hidden_dims": "32,32", "eval_episodes": 2}
# 4 envs, 8 control steps per action: an episode is 125 steps of the loop, so each env ends two
# (truncated) episodes in 1,024 env steps; updates from env step 256 on.
SAC = {
    **SMALL,
    "num_envs": 4,
    "action_repeat": 8,
    "learning_starts": 256,
    "batch_size": 32,
    "eval_every": 512,
}
SAC_STEPS = 1_024
# 4 envs, rollouts of 32 steps: 128 env steps per update; an evaluation every 4 updates.
PPO = {
    **SMALL,
    "num_envs": 4,
    "rollout_steps": 32,
    "action_repeat": 8,
    "epochs": 2,
    "batch_size": 64,
    "eval_every": 256,
}
PPO_STEPS = 512


def _train(algo: str, out: Path, steps: int, seed: int = 0, **kwargs):
    overrides = SAC if algo == "sac" else PPO
    return diffmaxent.train(
        algo, ENV, steps=steps, seed=seed, out=out, overrides=overrides, progress=False, **kwargs
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.METRICS_FILE).open() as file:
        return [
            {k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(file)
        ]


def _newest_checkpoint(run_dir: Path, which: int = -1) -> dict[str, np.ndarray]:
    """The agent state and the loop's arrays of the run's newest checkpoint (``which``: another
    one, oldest first)."""
    last = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)[which]
    arrays = {}
    for name in (checkpoint.STATE_FILE, checkpoint.LOOP_FILE):
        with np.load(last / name) as data:
            arrays.update({f"{name}/{key}": data[key] for key in data.files})
    return arrays


def _replay(run_dir: Path, inserted: int, improved_actions: bool = False) -> ReplayBuffer:
    return ReplayBuffer.restore(
        run_dir / runs.REPLAY_DIR, 1_000_000, 5, 1, inserted, improved_actions
    )


def _assert_same_run(first: Path, second: Path) -> None:
    assert _rows(first) == _rows(second)
    a, b = _newest_checkpoint(first), _newest_checkpoint(second)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sac") / "run"
    return _train("sac", out, SAC_STEPS), out


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    return _train("ppo", out, PPO_STEPS), out


# --- the on-device replay buffer -----------------------------------------------------------------


def _transition(value: float, terminated: float, truncated: float) -> Batch:
    return Batch(
        obs=jnp.full((1, 2), value),
        action=jnp.full((1, 1), -value),
        reward=jnp.full((1,), value),
        next_obs=jnp.full((1, 2), value + 0.5),
        terminated=jnp.full((1,), terminated),
        truncated=jnp.full((1,), truncated),
    )


def test_buffer_keeps_termination_apart_from_truncation_and_overwrites_the_oldest():
    buffer = DeviceBuffer.empty(3, 2, 1)
    buffer = buffer.insert(_transition(1.0, terminated=1.0, truncated=0.0))
    buffer = buffer.insert(_transition(2.0, terminated=0.0, truncated=1.0))
    np.testing.assert_array_equal(buffer.terminated, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(buffer.truncated, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(buffer.next_obs[:2, 0], [1.5, 2.5])
    # Two more: the second goes to row 0, the oldest.
    both = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b]),
        _transition(3.0, 0.0, 0.0),
        _transition(4.0, 0.0, 0.0),
    )
    buffer = buffer.insert(both)
    assert int(buffer.inserted) == 4
    np.testing.assert_array_equal(buffer.reward, [4.0, 2.0, 3.0])
    np.testing.assert_array_equal(buffer.terminated, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(buffer.truncated, [0.0, 1.0, 0.0])
    # Samples are whole rows of the filled part.
    sample = buffer.sample(jax.random.PRNGKey(0), 64, 2)
    assert sample.reward.shape == (2, 64)
    np.testing.assert_array_equal(sample.obs[..., 0], sample.reward)
    np.testing.assert_array_equal(sample.truncated, (sample.reward == 2.0).astype(np.float32))
    assert set(np.unique(sample.reward)) == {2.0, 3.0, 4.0}


def test_buffer_samples_only_filled_rows_and_round_trips_through_the_host():
    buffer = DeviceBuffer.empty(8, 2, 1).insert(_transition(7.0, 0.0, 1.0))
    sample = buffer.sample(jax.random.PRNGKey(1), 32, 1)
    np.testing.assert_array_equal(sample.reward, np.full((1, 32), 7.0))
    back = DeviceBuffer.from_host(buffer.to_host())
    for name, value in buffer._asdict().items():
        np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)


# --- sac ------------------------------------------------------------------------------------------


def test_sac_runs_end_to_end_and_evaluates_at_its_points(sac_run):
    result, out = sac_run
    assert [row["env_step"] for row in result.metrics] == [512, 1024]
    updates = SAC_STEPS // 4 - SAC["learning_starts"] // 4 + 1
    assert result.metrics[-1]["updates"] == updates
    assert all(np.isfinite(row["eval_return_mean"]) for row in result.metrics)
    assert np.isfinite(result.metrics[-1]["critic_loss"])
    assert runs.read_json(out / runs.STATUS_FILE)["status"] == "complete"
    assert runs.read_json(out / runs.CONFIG_FILE)["loop"]["num_envs"] == 4


def test_sac_episode_ends_are_truncations_with_the_real_final_observation(sac_run):
    """Cartpole never terminates; its time limit is a truncation, stored with the episode's real
    last observation as next_obs (the env's next obs is then a new episode's first)."""
    result, out = sac_run
    buffer = _replay(out, SAC_STEPS)
    rows = SAC_STEPS  # row i is env i % 4's step i // 4
    assert not buffer.terminated[:rows].any()
    ended = np.flatnonzero(buffer.truncated[:rows])
    assert list(ended) == [4 * 124 + e for e in range(4)] + [4 * 249 + e for e in range(4)]
    continuing = np.setdiff1d(np.arange(rows - 4), ended)
    np.testing.assert_array_equal(buffer.next_obs[continuing], buffer.obs[continuing + 4])
    first = ended[:4]
    assert not np.any(np.all(buffer.next_obs[first] == buffer.obs[first + 4], axis=1))
    # The cart starts near the centre at rest: a new episode's first observation.
    np.testing.assert_allclose(buffer.obs[first + 4, 0], 0.0, atol=0.1)
    assert result.metrics[0]["train_episode_return"] is not None


def test_same_seed_same_run(sac_run, tmp_path):
    _, out = sac_run
    _train("sac", tmp_path / "again", SAC_STEPS)
    _assert_same_run(out, tmp_path / "again")


@pytest.fixture(scope="module")
def sac_seed_1(tmp_path_factory):
    out = tmp_path_factory.mktemp("sac1") / "run"
    return _train("sac", out, SAC_STEPS, seed=1), out


def test_one_step_per_host_call_computes_the_same_run(sac_run, tmp_path, monkeypatch):
    """Calls are cut by time (CALL_SECONDS); cutting them into single steps changes nothing."""
    _, out = sac_run
    monkeypatch.setattr(device, "CALL_SECONDS", 0.0)
    _train("sac", tmp_path / "single-steps", SAC_STEPS)
    _assert_same_run(out, tmp_path / "single-steps")


def test_other_seed_other_run(sac_run, sac_seed_1):
    (result, _), (other, _) = sac_run, sac_seed_1
    assert other.metrics[-1]["critic_loss"] != result.metrics[-1]["critic_loss"]
    assert other.metrics[0]["eval_return_mean"] != result.metrics[0]["eval_return_mean"]


# vmap (the accelerators' default) is a second minute-long compile on a CPU: with -m learning.
@pytest.mark.parametrize(
    "seed_batching",
    ["map", pytest.param("vmap", marks=[pytest.mark.learning, pytest.mark.long_learning])],
)
def test_seeds_in_one_program_learn_as_each_alone(sac_run, sac_seed_1, tmp_path, seed_batching):
    """Seeds trained together run one program over a seed axis, compiled differently from the
    single-seed one: each seed's run matches its single run up to rounding. Its random warm-up
    transitions match closely; its agent state at the first checkpoint (65 updates in: rounding
    differences grow with every update) lies far closer to its single run's than to the other
    seed's."""
    group = diffmaxent.train(
        "sac",
        ENV,
        steps=SAC_STEPS,
        seeds=[0, 1],
        out=tmp_path / "group",
        overrides=SAC,
        progress=False,
        seed_batching=seed_batching,
    )
    alone = [out for _, out in (sac_run, sac_seed_1)]
    warm_up = slice(0, SAC["learning_starts"])
    for index, member in enumerate(group.runs):
        a, b = _replay(alone[index], SAC_STEPS), _replay(member.run_dir, SAC_STEPS)
        for name in Batch._fields:
            np.testing.assert_allclose(
                getattr(b, name)[warm_up],
                getattr(a, name)[warm_up],
                rtol=1e-5,
                atol=1e-5,
                err_msg=name,
            )
        together = _agent_state(member.run_dir)
        own, other = _agent_state(alone[index]), _agent_state(alone[1 - index])
        assert np.linalg.norm(together - own) < 0.05 * np.linalg.norm(together - other)


def _agent_state(run_dir: Path) -> np.ndarray:
    """Every float of the agent state at the run's first checkpoint, in one vector."""
    arrays = _newest_checkpoint(run_dir, 0)
    names = sorted(name for name in arrays if name.startswith(checkpoint.STATE_FILE))
    return np.concatenate([arrays[name].ravel().astype(np.float64) for name in names])


def test_a_buffer_smaller_than_one_step_of_all_envs_ends_with_one_line_before_writing(tmp_path):
    with pytest.raises(UsageError, match="must hold one step of all num_envs"):
        diffmaxent.train(
            "sac",
            ENV,
            steps=8,
            out=tmp_path / "run",
            overrides={"num_envs": 8, "buffer_size": 4},
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_sac_runs_on_cartpole_swingup_with_its_mjx_preset_scaled_down(tmp_path):
    """The mjx preset's sampling (8 gradient steps of 512 rows per step of all envs) with fewer
    envs and small networks; swing-up episodes start hanging down, so the first returns are low."""
    small = {**SMALL, "num_envs": 16, "action_repeat": 8, "learning_starts": 512}
    result = diffmaxent.train(
        "sac",
        "mjx:CartpoleSwingup",
        preset="mjx",
        steps=2_048,
        out=tmp_path / "run",
        overrides={**small, "buffer_size": 4_096, "eval_every": 1_024},
        progress=False,
    )
    config = runs.read_json(tmp_path / "run" / runs.CONFIG_FILE)
    assert config["preset"] == "mjx"
    assert (config["loop"]["batch_size"], config["loop"]["updates_per_step"]) == (512, 8)
    assert [row["env_step"] for row in result.metrics] == [1_024, 2_048]
    assert result.metrics[-1]["updates"] == 8 * ((2_048 - 512) // 16 + 1)
    assert all(np.isfinite(row["critic_loss"]) for row in result.metrics)
    assert all(0.0 <= row["eval_return_mean"] <= 125.0 for row in result.metrics)


# --- dipo: improved actions in the device buffer --------------------------------------------------


def test_improved_actions_start_as_the_taken_ones_and_the_last_occurrence_of_a_row_wins():
    """The device buffer's write-back keeps the host buffer's rule on rows drawn more than once."""
    capacity, action_dim = 6, 2
    device_buffer = DeviceBuffer.empty(capacity, 2, action_dim, improved_actions=True)
    host = ReplayBuffer(capacity, 2, action_dim, improved_actions=True)
    rng = np.random.default_rng(0)
    for _ in range(capacity + 2):  # wraps: rows 0 and 1 hold the newest two
        obs, action = rng.normal(size=2), rng.uniform(-1, 1, action_dim)
        host.add(obs, action, 0.0, obs, False, False)
        device_buffer = device_buffer.insert(
            Batch(obs[None], action[None], np.zeros(1), obs[None], np.zeros(1), np.zeros(1))
        )
    np.testing.assert_array_equal(device_buffer.improved_action, device_buffer.action)
    rows = np.array([[0, 3, 3, 5], [1, 3, 0, 2]])  # row 3 thrice, row 0 twice
    improved = rng.normal(size=(*rows.shape, action_dim)).astype(np.float32)
    host.write_improved_actions(rows, improved)
    device_buffer = device_buffer.write_improved_actions(jnp.asarray(rows), jnp.asarray(improved))
    np.testing.assert_array_equal(device_buffer.improved_action, host.improved_action)
    np.testing.assert_array_equal(device_buffer.improved_action[3], improved[1, 1])
    np.testing.assert_array_equal(device_buffer.improved_action[4], device_buffer.action[4])
    back = DeviceBuffer.from_host(device_buffer.to_host())
    np.testing.assert_array_equal(back.improved_action, device_buffer.improved_action)


DIPO = {**SAC, "num_diffusion_steps": 4, "eval_every": 256}
DIPO_STEPS = 512


@pytest.fixture(scope="module")
def dipo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dipo") / "run"
    return diffmaxent.train(
        "dipo", ENV, steps=DIPO_STEPS, out=out, overrides=DIPO, progress=False
    ), out


@pytest.mark.slow
def test_dipo_trains_on_the_device_loop_and_improves_the_replayed_actions(dipo_run):
    result, out = dipo_run
    assert [row["env_step"] for row in result.metrics] == [256, 512]
    assert result.metrics[-1]["updates"] == (DIPO_STEPS - DIPO["learning_starts"]) // 4 + 1
    assert np.isfinite(result.metrics[-1]["critic_loss"])
    buffer = _replay(out, DIPO_STEPS, improved_actions=True)
    stored = slice(0, DIPO_STEPS)
    moved = np.any(buffer.improved_action[stored] != buffer.action[stored], axis=1)
    # 65 gradient steps of 32 rows on 512 stored: most rows were drawn; those never drawn keep
    # the taken action.
    assert 0.5 < moved.mean() < 1.0
    assert np.all(np.abs(buffer.improved_action[stored]) <= 1.0)


@pytest.mark.slow
def test_dipo_continued_run_equals_the_uninterrupted_one_bitwise(dipo_run, tmp_path):
    _, out = dipo_run
    half = tmp_path / "half"
    diffmaxent.train("dipo", ENV, steps=DIPO_STEPS // 2, out=half, overrides=DIPO, progress=False)
    diffmaxent.train(resume=half, steps=DIPO_STEPS, progress=False)
    _assert_same_run(out, half)
    np.testing.assert_array_equal(
        _replay(half, DIPO_STEPS, improved_actions=True).improved_action,
        _replay(out, DIPO_STEPS, improved_actions=True).improved_action,
    )


# --- ppo ------------------------------------------------------------------------------------------


def test_ppo_runs_end_to_end(ppo_run):
    result, out = ppo_run
    assert [row["env_step"] for row in result.metrics] == [256, 512]
    assert [row["updates"] for row in result.metrics] == [2, 4]
    assert all(np.isfinite(row["eval_return_mean"]) for row in result.metrics)
    assert runs.read_json(out / runs.STATUS_FILE)["status"] == "complete"


def test_ppo_continued_run_equals_the_uninterrupted_one_bitwise(ppo_run, tmp_path):
    _, out = ppo_run
    half = tmp_path / "half"
    _train("ppo", half, PPO_STEPS // 2)
    diffmaxent.train(resume=half, steps=PPO_STEPS, progress=False)
    _assert_same_run(out, half)


# --- learning -------------------------------------------------------------------------------------

# 64 envs, rollouts of 32 steps (2,048 env steps per update), 8 epochs of minibatches of 512; on
# top of ppo's cpu preset (gae_lambda 0.95).
PPO_LEARNING = {
    "num_envs": 64,
    "rollout_steps": 32,
    "epochs": 8,
    "batch_size": 512,
    "gamma": 0.99,
    "reward_scale": 1.0,
    "actor_lr": 1e-3,
    "critic_lr": 1e-3,
    "eval_every": 100_000,
    "eval_episodes": 4,
}


@pytest.mark.learning
@pytest.mark.long_learning
def test_ppo_learns_cartpole_balance(tmp_path):
    """Seed 0 measured: 284 at 100k env steps, 914 at 200k, 1000 from 400k on (1M steps in
    150 s, 80 of them compiling). The test takes 100-125 s on 2 loaded cores."""
    result = diffmaxent.train(
        "ppo",
        ENV,
        steps=500_000,
        out=tmp_path / "run",
        overrides=PPO_LEARNING,
        progress=False,
    )
    assert max(row["eval_return_mean"] for row in result.metrics) >= 600
