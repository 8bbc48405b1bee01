"""MuJoCo Playground's DeepMind Control tasks on MJX (``mjx:``): the functional env's conventions
(two cartpole tasks: MJX compiles for tens of seconds per function on a CPU, so each task compiles
one rollout), the Gymnasium adapter against the functional env and against the ``dmc:`` twin, and
the one-line errors.

Needs the `mjx` extra (and `dmc` for the twin).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmaxent.cli import main
from diffmaxent.envs import env_suite, make_env
from diffmaxent.envs.mjx import MJXGymEnv, make_mjx_env
from diffmaxent.errors import UsageError
from drift_task import DRIFT_ENV, DriftTask

pytest.importorskip("mujoco_playground")

ENVS = 3


def compiled_rollout(env):
    """``rollout(keys [N, 2], actions [T, N, A], start_steps [N], nan_velocity [N])``: ``N`` envs
    reset from ``keys`` (episode step counters set to ``start_steps``, and NaN velocities where
    ``nan_velocity``), then stepped through ``actions``.

    Returns ``(first_obs [N, obs_dim], out)``, ``out`` a dict of ``[T, N, ...]`` arrays: ``obs``
    (the real next observation), ``reward``, ``terminated``, ``truncated``, ``next_obs`` (what the
    next action sees) and ``steps`` (control steps into the episode after the step).
    """

    def start(key, start_steps, nan_velocity):
        state = env.reset(key)
        data = state.physics.data
        qvel = jnp.where(nan_velocity, jnp.nan, data.qvel)
        physics = state.physics.replace(data=data.replace(qvel=qvel))
        return state._replace(physics=physics, steps=start_steps)

    def rollout(keys, actions, start_steps, nan_velocity):
        states = jax.vmap(start)(keys, start_steps, nan_velocity)

        def one_step(states, action):
            states, obs, reward, terminated, truncated = env.step_envs(states, action)
            out = {"obs": obs, "reward": reward, "terminated": terminated}
            out |= {"truncated": truncated, "next_obs": states.obs, "steps": states.steps}
            return states, out

        first = states.obs
        _, out = jax.lax.scan(one_step, states, actions)
        return first, out

    jitted = jax.jit(rollout)

    def run(keys, actions, start_steps=None, nan_velocity=None):
        count = len(keys)
        start_steps = np.zeros(count, np.int32) if start_steps is None else start_steps
        nan_velocity = np.zeros(count, bool) if nan_velocity is None else nan_velocity
        start_steps, nan_velocity = np.asarray(start_steps, np.int32), np.asarray(nan_velocity)
        first, out = jitted(keys, actions, start_steps, nan_velocity)
        return np.asarray(first), {name: np.asarray(value) for name, value in out.items()}

    return run


# task -> (obs_dim, action_dim, action_repeat)
TASKS = {"CartpoleBalance": (5, 1, 2), "CartpoleSwingup": (5, 1, 1)}


@functools.cache
def task_env(name):
    """(env, rollout, actions_like): every rollout of a task has the shapes of ``actions_like``
    (``ENVS`` envs, one episode and 3 steps), so that it compiles once (about a minute)."""
    env = make_mjx_env(f"mjx:{name}", action_repeat=TASKS[name][2])
    actions_like = np.zeros((env.max_episode_steps + 3, ENVS, env.action_dim), np.float32)
    return env, compiled_rollout(env), actions_like


def random_actions(actions_like, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, actions_like.shape).astype(np.float32)


@pytest.fixture(scope="module", params=list(TASKS))
def task(request):
    """(env, rollout, actions_like, keys, zero-action episode from ``keys``)."""
    env, rollout, actions_like = task_env(request.param)
    keys = jax.random.split(jax.random.PRNGKey(0), ENVS)
    return env, rollout, actions_like, keys, rollout(keys, actions_like)


def test_observations_are_flat_float32_and_actions_map_to_the_control_range(task):
    env, _, _, _, (first, out) = task
    obs_dim, action_dim, _ = TASKS[env.task]
    assert (env.obs_dim, env.action_dim) == (obs_dim, action_dim)
    assert env.spec.obs_dim == obs_dim and env.spec.action_dim == action_dim
    assert first.shape == (ENVS, obs_dim) and first.dtype == np.float32
    assert out["obs"].shape == (env.max_episode_steps + 3, ENVS, obs_dim)
    assert out["obs"].dtype == np.float32 and out["reward"].dtype == np.float32
    assert np.isfinite(out["obs"]).all() and np.isfinite(out["reward"]).all()
    # DeepMind Control rewards lie in [0, 1] per control step.
    assert (out["reward"] >= 0).all() and (out["reward"] <= env.action_repeat + 1e-6).all()
    assert (env.action_low, env.action_high) == ((-1.0,) * action_dim, (1.0,) * action_dim)
    unit = jnp.array([[-1.0], [0.0], [0.5], [1.0], [7.0]])
    np.testing.assert_allclose(env.to_env_action(unit), [[-1], [0], [0.5], [1], [1]])


def test_time_limit_is_a_truncation_and_the_final_observation_is_kept(task):
    env, _, _, _, (first, out) = task
    limit = env.max_episode_steps
    assert limit == -(-1000 // env.action_repeat)
    assert not out["terminated"].any()
    ends = np.argwhere(out["truncated"])
    assert sorted(ends[:, 0].tolist()) == [limit - 1] * ENVS  # every env, at the limit only
    np.testing.assert_array_equal(out["steps"][limit - 2], 1000 - env.action_repeat)
    np.testing.assert_array_equal(out["steps"][limit - 1], 0)  # the next episode has begun
    np.testing.assert_array_equal(out["steps"][limit], env.action_repeat)
    # The step's obs is the episode's last one (test_gym_adapter_steps_like_the_functional_env
    # checks its values); the next action sees a new episode's first observation, which differs
    # from the first episode's.
    final, fresh = out["obs"][limit - 1], out["next_obs"][limit - 1]
    np.testing.assert_array_equal(out["next_obs"][limit - 2], out["obs"][limit - 2])
    assert not np.allclose(final, fresh, atol=1e-3)
    assert not np.allclose(fresh, first, atol=1e-3)


def test_same_key_same_episode_other_keys_differ(task):
    _, rollout, actions_like, keys, (first, _) = task
    actions = random_actions(actions_like, 0)
    first_a, out_a = rollout(keys, actions)
    first_b, out_b = rollout(keys, actions)
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(out_a["obs"], out_b["obs"])
    np.testing.assert_array_equal(out_a["reward"], out_b["reward"])
    np.testing.assert_array_equal(first_a, first)  # actions do not reach the initial state
    assert len({tuple(row) for row in first_a}) == ENVS


def test_vmapped_envs_are_independent(task):
    """Env 0 steps the same whatever its neighbours do: other keys, an episode ending early
    (started 990 control steps in) and a NaN physics state that terminates at once."""
    env, rollout, actions_like, keys, _ = task
    actions = random_actions(actions_like, 1)
    _, alone = rollout(keys, actions)
    other_keys = keys.at[1:].set(jax.random.split(jax.random.PRNGKey(5), ENVS - 1))
    _, mixed = rollout(other_keys, actions, [0, 990, 0], [False, False, True])
    for name in ("obs", "reward", "terminated", "truncated", "next_obs"):
        np.testing.assert_array_equal(mixed[name][:, 0], alone[name][:, 0])
    assert not np.array_equal(mixed["obs"][:, 1], alone["obs"][:, 1])
    # Env 1 truncates after its last 10 control steps and starts again.
    end = -(-10 // env.action_repeat) - 1
    assert mixed["truncated"][: end + 2, 1].tolist() == [False] * end + [True, False]
    assert mixed["steps"][end, 1] == 0 and not mixed["terminated"][:, 1].any()
    # Env 2's NaN physics terminate its episode on the first step, with a finite observation and
    # a zero reward, and a new episode follows.
    assert mixed["terminated"][0, 2] and not mixed["truncated"][0, 2]
    assert np.isfinite(mixed["obs"][0, 2]).all() and mixed["reward"][0, 2] == 0.0
    assert not mixed["terminated"][1:, 2].any() and np.isfinite(mixed["obs"][1:, 2]).all()


def test_envs_stepped_together_equal_vmapped_steps_and_reset_only_at_episode_ends():
    """``step_envs`` (the device loop's call) gives ``vmap(step)``'s results bit for bit but
    computes the resets only on steps where an episode ended; on the pure-JAX stand-in task,
    whose reset counts its calls."""
    resets = []

    class CountingDrift(DriftTask):
        def reset(self, key):
            jax.debug.callback(lambda: resets.append(1))
            return super().reset(key)

    env = dataclasses.replace(DRIFT_ENV, playground_env=CountingDrift())
    states = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 4))
    running = states._replace(steps=jnp.zeros(4, jnp.int32))
    two_end = states._replace(steps=jnp.array([0, 5, 0, 5], jnp.int32))  # at the time limit
    actions = jnp.full((4, 1), 0.5)
    step_envs, vmapped_step = jax.jit(env.step_envs), jax.jit(jax.vmap(env.step))
    for at in (running, two_end):
        jax.tree.map(
            np.testing.assert_array_equal, step_envs(at, actions), vmapped_step(at, actions)
        )
    assert step_envs(two_end, actions)[4].tolist() == [False, True, False, True]

    def resets_computed(step, at):
        jax.effects_barrier()
        resets.clear()
        jax.block_until_ready(step(at, actions))
        jax.effects_barrier()
        return len(resets)

    assert resets_computed(vmapped_step, running) > 0  # vmap(step) resets on every step
    assert resets_computed(step_envs, running) == 0
    assert resets_computed(step_envs, two_end) > 0


def test_gym_adapter_steps_like_the_functional_env():
    """``make_env`` (one env, jitted steps, action repeat by the host wrapper) against the
    functional env with its own action repeat: the same episode, the same final observation at
    the time limit, and the next reset continues the key sequence as the functional auto-reset
    does."""
    functional, rollout, actions_like = task_env("CartpoleBalance")
    assert functional.action_repeat == 2
    keys = jax.random.split(jax.random.PRNGKey(0), ENVS).at[0].set(jax.random.PRNGKey(7))
    actions = random_actions(actions_like, 2)
    first, out = rollout(keys, actions)
    limit = functional.max_episode_steps

    env = make_env("mjx:CartpoleBalance", seed=7, action_repeat=2)
    try:
        assert env.env_spec == functional.spec
        obs, _ = env.reset()
        np.testing.assert_allclose(obs, first[0], atol=1e-5)
        for index, action in enumerate(actions[:limit, 0]):
            obs, reward, terminated, truncated, _ = env.step(action)
            assert obs.dtype == np.float32 and isinstance(reward, float)
            np.testing.assert_allclose(obs, out["obs"][index, 0], atol=1e-4)
            assert reward == pytest.approx(float(out["reward"][index, 0]), abs=1e-4)
            assert (terminated, truncated) == (False, index == limit - 1)
        obs, _ = env.reset()
        np.testing.assert_allclose(obs, out["next_obs"][limit - 1, 0], atol=1e-5)
    finally:
        env.close()


def test_twin_of_dmc_cartpole_balance_agrees_from_the_same_state():
    """``mjx:CartpoleBalance`` and ``dmc:cartpole-balance`` set to the same initial state: the
    same observation layout (cart position, pole cos, sin, velocities), rewards within 2e-3 over
    50 random actions (measured 3.7e-4; they part later: Playground integrates with Euler, the
    suite with RK4, docs/envs.md)."""
    pytest.importorskip("dm_control")
    mjx = make_env("mjx:CartpoleBalance", seed=3)
    dmc = make_env("dmc:cartpole-balance", seed=3)
    try:
        assert mjx.env_spec.obs_dim == dmc.env_spec.obs_dim == 5
        assert mjx.env_spec.action_dim == dmc.env_spec.action_dim == 1
        obs_mjx, _ = mjx.reset()
        dmc.reset()
        data = mjx.unwrapped._state.physics.data
        physics = dmc.unwrapped._env.physics
        with physics.reset_context():
            physics.data.qpos[:] = np.asarray(data.qpos)
            physics.data.qvel[:] = np.asarray(data.qvel)
        task = dmc.unwrapped._env.task
        obs_dmc = np.concatenate([np.ravel(v) for v in task.get_observation(physics).values()])
        np.testing.assert_allclose(obs_mjx, obs_dmc, atol=1e-6)
        actions = np.random.default_rng(0).uniform(-1, 1, (50, 1)).astype(np.float32)
        for action in actions:
            obs_mjx, reward_mjx, *_ = mjx.step(action)
            obs_dmc, reward_dmc, *_ = dmc.step(action)
            assert reward_mjx == pytest.approx(reward_dmc, abs=2e-3)
            np.testing.assert_allclose(obs_mjx, obs_dmc, atol=2e-2)
    finally:
        mjx.close()
        dmc.close()


def test_short_cli_train_run_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "sac", "--env", "mjx:CartpoleBalance", "--steps", "200"]
    args += ["--out", str(out), "--set", "learning_starts=100", "--set", "eval_every=200"]
    args += ["--set", "eval_episodes=1", "--set", "batch_size=32", "--set", "action_repeat=8"]
    assert main([*args, "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["env"] == "mjx:CartpoleBalance" and config["env_spec"]["obs_dim"] == 5
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[2]))
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    assert "return" in capsys.readouterr().out


def test_rendered_frame_is_a_non_blank_rgb_image():
    env = make_env("mjx:CartpoleBalance", seed=0, render_mode="rgb_array")
    try:
        env.reset()
        env.step(np.zeros(1, np.float32))
        frame = env.render()
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
        assert frame.std() > 5.0 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 50
    finally:
        env.close()


def test_missing_extra_names_the_extra(monkeypatch):
    MJXGymEnv("mjx:CartpoleBalance")  # loaded tasks (cached) must not hide a missing extra
    for name in list(sys.modules):
        if name == "mujoco_playground" or name.startswith("mujoco_playground."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mujoco_playground", None)  # makes the import fail
    for make in (make_env, make_mjx_env, MJXGymEnv):
        with pytest.raises(UsageError, match=r"pip install 'diffmaxent\[mjx\]'") as error:
            make("mjx:CartpoleBalance")
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("env_id", "says"),
    [
        ("mjx:NoSuchTask", "unknown MJX task mjx:NoSuchTask; known: AcrobotSwingup"),
        ("mjx:Go1JoystickFlatTerrain", "downloads MuJoCo Menagerie"),
        ("mjx:CartpoleBalance@gpu", "IMPL one of jax, warp"),
        ("mjx:", "bad MJX id"),
        ("mjx:ReacherEasy", "Playground cannot load mjx:ReacherEasy"),
    ],
)
def test_bad_ids_end_with_one_line(env_id, says):
    with pytest.raises(UsageError, match=says) as error:
        make_env(env_id)
    assert "\n" not in str(error.value)


def test_bad_id_through_the_cli_is_one_line(tmp_path, capsys):
    args = ["train", "--algo", "sac", "--env", "mjx:NoSuchTask", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffmaxent: error: unknown MJX task")


def test_suite_of_mjx_ids():
    assert env_suite("mjx:CheetahRun") == env_suite("mjx:CheetahRun@warp") == "mjx"
