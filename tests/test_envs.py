"""Env factory contracts and the MultiGoal environment at hand-computed points."""

from __future__ import annotations

import numpy as np
import pytest

from diffmaxent import diffusion
from diffmaxent.api import resolve_config
from diffmaxent.envs import make_env, mixture_bandit
from diffmaxent.envs.factory import SAME_AS_PAPER_ENV, paper_env_id, paper_env_warning
from diffmaxent.envs.multigoal import GOAL_POSITIONS, goal_counts, plot_trajectories
from diffmaxent.errors import UsageError
from diffmaxent.registry import get_algo


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


# --- The papers' Gym MuJoCo envs (docs/envs.md) -----------------------------------------------

# task -> (obs_dim, action_dim) of Gym v3, the inputs the papers' networks had
PAPER_SIZES = {
    "Ant": (111, 8),
    "HalfCheetah": (17, 6),
    "Hopper": (11, 3),
    "Humanoid": (376, 17),
    "Swimmer": (8, 2),
    "Walker2d": (17, 6),
}
CONTACT_FORCES = 84  # cfrc_ext: 14 bodies x 6, the last numbers of Ant's and Humanoid's v3 obs


def paper_and_other(task_env_id, other_id, steps=200, seed=3):
    """Step the paper env of a task and ``other_id`` from the same seed with the same actions,
    to the first episode end: per env, the observations (reset's first), rewards, terminations
    and infos."""
    runs = []
    for env_id in (paper_env_id(task_env_id), other_id):
        env = make_env(env_id, seed=seed)
        try:
            first, _ = env.reset()
            rng = np.random.default_rng(seed)
            observations, rewards, ends, infos = [first], [], [], []
            for _ in range(steps):
                obs, reward, terminated, truncated, info = env.step(
                    rng.uniform(-1, 1, env.env_spec.action_dim).astype(np.float32)
                )
                observations.append(obs)
                rewards.append(reward)
                ends.append(terminated)
                infos.append(info)
                if terminated or truncated:
                    break
        finally:
            env.close()
        runs.append((np.stack(observations), np.array(rewards), ends, infos))
    return runs


@pytest.mark.parametrize("task", list(PAPER_SIZES))
def test_paper_envs_have_v3_sizes_and_time_limit(task):
    env = make_env(paper_env_id(task), seed=0)
    try:
        assert (env.env_spec.obs_dim, env.env_spec.action_dim) == PAPER_SIZES[task]
        assert env.spec.max_episode_steps == 1000
        env.reset()
        obs, reward, *_ = env.step(env.action_space.sample())
        assert obs.shape == (PAPER_SIZES[task][0],) and np.isfinite(reward)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", sorted(SAME_AS_PAPER_ENV))
def test_ids_said_to_match_the_paper_env_step_exactly_like_it(env_id):
    (paper_obs, paper_rewards, paper_ends, _), (obs, rewards, ends, _) = paper_and_other(
        env_id, env_id
    )
    np.testing.assert_array_equal(paper_obs, obs)
    np.testing.assert_array_equal(paper_rewards, rewards)
    assert paper_ends == ends
    assert paper_env_warning(env_id) is None


@pytest.mark.parametrize(("task", "v4_obs_dim"), [("Ant", 27), ("Humanoid", 376)])
def test_paper_ant_and_humanoid_are_v4_with_zero_contact_forces(task, v4_obs_dim):
    """The same states and rewards as v4; where v3 observed cfrc_ext (zeros under mujoco-py),
    paper/Ant-v3 observes zeros and Ant-v4 nothing, paper/Humanoid-v3 zeros and Humanoid-v4 the
    forces."""
    (paper_obs, paper_rewards, _, _), (obs, rewards, _, _) = paper_and_other(task, f"{task}-v4")
    live = PAPER_SIZES[task][0] - CONTACT_FORCES
    assert obs.shape[1] == v4_obs_dim
    np.testing.assert_array_equal(paper_obs[:, :live], obs[:, :live])
    np.testing.assert_array_equal(paper_rewards, rewards)
    assert not paper_obs[:, live:].any()
    if task == "Humanoid":
        assert obs[:, live:].any()  # Gymnasium's step computes the forces that v3's did not


@pytest.mark.parametrize(("task", "healthy_reward"), [("Ant", 1.0), ("Humanoid", 5.0)])
def test_paper_ant_and_humanoid_rewards_leave_out_v5s_contact_cost(task, healthy_reward):
    """Same actions, same states: the paper reward is v5's plus v5's contact cost, plus the
    healthy reward on a terminating step (v5 pays it only while healthy)."""
    (_, paper_rewards, paper_ends, _), (_, rewards, ends, infos) = paper_and_other(
        task, f"{task}-v5", steps=300
    )
    assert paper_ends == ends
    contact_cost = -np.array([info["reward_contact"] for info in infos])
    terminal_bonus = healthy_reward * np.array(ends, dtype=float)
    np.testing.assert_allclose(paper_rewards, rewards + contact_cost + terminal_bonus, atol=1e-9)
    assert contact_cost.max() > 0  # v5's cost is not zero on these steps, so the test can fail


def test_paper_envs_pay_the_healthy_reward_on_the_step_that_ends_the_episode():
    """v3 (and v4) pay Hopper's healthy reward on every step, the falling one too; v5 only while
    healthy: the same episode differs by exactly that reward, on its last step."""
    (paper_obs, paper_rewards, paper_ends, _), (obs, rewards, ends, infos) = paper_and_other(
        "Hopper", "Hopper-v5"
    )
    assert paper_ends[-1] and ends[-1] and len(ends) < 200  # random actions topple the hopper
    np.testing.assert_array_equal(paper_obs, obs)
    assert infos[-1]["reward_survive"] == 0.0
    np.testing.assert_allclose(paper_rewards - rewards, [0.0] * (len(ends) - 1) + [1.0])


def test_paper_env_id_and_warning_name_the_paper_env():
    assert paper_env_id("Ant") == paper_env_id("Ant-v5") == "paper/Ant-v3"
    assert paper_env_id("paper/Walker2d-v3") == "paper/Walker2d-v3"
    for env_id in ("Ant-v5", "Ant-v4", "Humanoid-v5", "Hopper-v5", "Walker2d-v5"):
        assert paper_env_id(env_id) in paper_env_warning(env_id)
    for env_id in ("paper/Ant-v3", "Pendulum-v1", "dmc:cheetah-run", "MultiGoal-v0"):
        assert paper_env_warning(env_id) is None
    for not_gym_mujoco in ("dmc:cheetah-run", "Pendulum-v1"):
        with pytest.raises(UsageError, match="Ant, HalfCheetah"):
            paper_env_id(not_gym_mujoco)


def test_v3_ids_are_refused_with_the_paper_env_named():
    with pytest.raises(UsageError, match=r"use paper/Ant-v3"):
        make_env("Ant-v3")


def test_paper_presets_set_their_per_task_values_on_paper_ids():
    config = resolve_config("maxentdp", "paper/Humanoid-v3", preset="paper")
    paper = get_algo("maxentdp").presets["paper"]
    assert config.agent.temperature == paper.per_task["Humanoid"]["temperature"]
    assert config.agent.temperature != resolve_config("maxentdp", "Pendulum-v1").agent.temperature


def test_mixture_bandit_rewards_the_log_density_of_its_mixture_and_ends_after_one_step():
    """The ground truth of DIME's Boltzmann test: reward log p(a) for the four-Gaussian mixture
    (the same density as diffusion.mixture_log_prob), one step per episode."""
    env = make_env(mixture_bandit.ENV_ID, seed=0)
    env.reset()
    action = np.array([0.45, -0.6], np.float32)
    _, reward, terminated, _, _ = env.step(action)
    expected = diffusion.mixture_log_prob(
        action.astype(np.float64), mixture_bandit.MODES, mixture_bandit.MODE_STD
    )
    assert reward == pytest.approx(float(expected), abs=1e-5)
    assert terminated  # (the one-step time limit also reports truncated; termination wins)
    assert mixture_bandit.mixture_entropy() == pytest.approx(-0.378, abs=0.01)
