"""Env factory contracts and the MultiGoal environment at hand-computed points."""

from __future__ import annotations

import numpy as np
import pytest

from diffmaxent.envs import make_env
from diffmaxent.envs.multigoal import GOAL_POSITIONS, goal_counts, plot_trajectories
from diffmaxent.errors import UsageError


def test_pendulum_spaces_dtype_and_rescaling():
    env = make_env("Pendulum-v1", seed=0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (3,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    assert env.env_spec.action_low == (-2.0,) and env.env_spec.action_high == (2.0,)
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0], np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)  # +1 maps to the env's upper bound
    env.step(np.array([-0.25], np.float32))
    assert env.unwrapped.last_u == pytest.approx(-0.5)
    env.step(np.array([7.0], np.float32))  # outside [-1, 1]: clipped, never past the env's bound
    assert env.unwrapped.last_u == pytest.approx(2.0)
    assert obs.dtype == np.float32 and isinstance(reward, float)
    assert terminated is False and truncated is False


def test_multigoal_frames_show_the_landscape_goals_and_the_moving_point():
    env = make_env("MultiGoal-v0", seed=0, render_mode="rgb_array")
    env.reset()
    first = env.render()
    assert first.shape == (320, 320, 3) and first.dtype == np.uint8 and first.std() > 20
    assert tuple(first[160, 274]) == (220, 30, 30)  # goal (5, 0) is painted red
    env.step(np.array([1.0, 1.0], np.float32))
    second = env.render()
    changed = np.argwhere((second != first).any(axis=-1))
    assert len(changed) > 20
    rows, cols = changed.mean(axis=0)
    assert cols > 160 and rows < 160  # the point moved right and up (+x, +y)
    plain = make_env("MultiGoal-v0")
    plain.reset()
    assert plain.render() is None  # no render_mode: no frames


def test_action_rescaling_round_trip_on_asymmetric_bounds():
    env = make_env("probe_envs:Probe-v0", seed=0)
    spec = env.env_spec
    assert (spec.action_low, spec.action_high) == ((0.0,), (4.0,))
    actions = np.linspace(-1, 1, 9, dtype=np.float32)[:, None]
    env_actions = spec.to_env_action(actions)
    np.testing.assert_allclose(env_actions[[0, 4, 8], 0], [0.0, 2.0, 4.0])
    np.testing.assert_allclose(spec.from_env_action(env_actions), actions, atol=1e-6)
    env.reset()
    env.step(np.array([0.5], np.float32))
    assert env.unwrapped.last_action.tolist() == [3.0]


def test_module_form_dict_observations_are_flattened_to_float32():
    env = make_env("probe_envs:Probe-v0", seed=0)
    obs, _ = env.reset()
    assert obs.shape == (3,) and obs.dtype == np.float32
    # Gymnasium's Dict space orders keys alphabetically: const (2 values), then count.
    np.testing.assert_allclose(obs, [0.5, -0.5, 0.0])
    assert env.observation_space.shape == (3,)


def test_time_limit_truncates_and_goal_terminates():
    env = make_env("probe_envs:Probe-v0", seed=0)
    env.reset()
    flags = [env.step(np.array([-1.0], np.float32))[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4
    assert flags[4] == (False, True)  # time limit: truncated, not terminated
    env.reset()
    assert env.step(np.array([1.0], np.float32))[2:4] == (True, False)


def test_seeding_makes_episodes_reproducible():
    first = make_env("MultiGoal-v0", seed=3).reset()[0]
    again = make_env("MultiGoal-v0", seed=3).reset()[0]
    other = make_env("MultiGoal-v0", seed=4).reset()[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "env_id,fragment",
    [
        ("NoSuchEnv-v0", "NoSuchEnv-v0"),
        ("no_such_module:Env-v0", "no_such_module"),
        ("probe_envs:ProbeDiscrete-v0", "Discrete action space"),
        ("", "non-empty"),
    ],
)
def test_unusable_env_ids_raise_one_line_errors(env_id, fragment):
    with pytest.raises(UsageError, match=fragment) as info:
        make_env(env_id)
    assert "\n" not in str(info.value)


# --- MultiGoal ------------------------------------------------------------------------------------


def _multigoal_at(position):
    env = make_env("MultiGoal-v0", seed=0)
    env.reset()
    env.unwrapped._position = np.asarray(position, np.float32)
    return env


def test_multigoal_spaces_and_start():
    env = make_env("MultiGoal-v0", seed=0)
    obs, _ = env.reset()
    assert env.observation_space.shape == (2,) and env.action_space.shape == (2,)
    assert env.env_spec.action_low == (-1.0, -1.0)
    assert np.all(np.abs(obs) < 0.5)  # N(0, 0.1^2) start
    np.testing.assert_array_equal(GOAL_POSITIONS, [[5, 0], [-5, 0], [0, 5], [0, -5]])


def test_multigoal_reward_away_from_goals():
    env = _multigoal_at([0.0, 0.0])
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0], np.float32))
    np.testing.assert_allclose(obs, [1.0, 1.0])
    # action cost 30 * (1 + 1) = 60; nearest goal (5, 0) or (0, 5): (1-5)^2 + 1^2 = 17.
    assert reward == pytest.approx(-77.0)
    assert (terminated, truncated, info["goal"]) == (False, False, -1)


def test_multigoal_goal_bonus_and_termination():
    env = _multigoal_at([4.5, 0.0])
    obs, reward, terminated, _, info = env.step(np.array([0.5, 0.0], np.float32))
    np.testing.assert_allclose(obs, [5.0, 0.0])
    # action cost 30 * 0.25 = 7.5; distance 0; bonus +10.
    assert reward == pytest.approx(2.5)
    assert terminated and info["goal"] == 0
    env = _multigoal_at([0.0, -4.2])
    _, reward, terminated, _, info = env.step(np.array([0.0, 0.0], np.float32))
    # distance 0.8 < 1 reaches goal (0, -5): -(0.64) + 10.
    assert reward == pytest.approx(9.36, abs=1e-5) and terminated and info["goal"] == 3


def test_multigoal_clips_position_to_the_box():
    env = _multigoal_at([6.8, 0.0])
    obs, reward, terminated, *_ = env.step(np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(obs, [7.0, 0.0])
    assert reward == pytest.approx(-(30.0 + 4.0))  # (7 - 5)^2 = 4
    assert not terminated


def test_multigoal_truncates_after_30_steps():
    env = make_env("MultiGoal-v0", seed=0)
    env.reset()
    for step in range(1, 31):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert not terminated
        assert truncated == (step == 30)


def test_goal_statistics_and_trajectory_figure(tmp_path):
    from diffmaxent.envs.multigoal import goal_statistics, plot_trajectories

    infos = [{"goal": 0}, {"goal": 0}, {"goal": 2}, {"goal": -1}, {"goal": 3}]
    stats = goal_statistics(infos)
    assert stats["goals_reached"] == 3 and stats["goal_episodes"] == 4
    assert stats["max_goal_share"] == pytest.approx(0.5)
    assert [stats[f"goal_{i}"] for i in range(4)] == [2, 0, 1, 1]
    assert goal_statistics([{"goal": -1}])["max_goal_share"] is None
    path = tmp_path / "t.png"
    plot_trajectories([np.array([[0.0, 0.0], [1.0, 0.5], [4.8, 0.1]])], str(path), "test")
    assert path.stat().st_size > 5000


def test_multigoal_trajectory_figure_counts_the_episodes_ending_at_each_goal(tmp_path):
    def path_to(end):
        return np.linspace([0.0, 0.0], end, 6).astype(np.float32)

    trajectories = [path_to([4.5, 0.0]), path_to([4.8, 0.3]), path_to([0.0, 4.6]), path_to([2, 2])]
    assert goal_counts(trajectories) == [2, 0, 1, 0]  # the last one ends at no goal
    figure = tmp_path / "trajectories.png"
    plot_trajectories(trajectories, str(figure), "four episodes")
    assert figure.stat().st_size > 0
